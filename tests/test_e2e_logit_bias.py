"""logit_bias on the real default model (SmolLM2-135M-Instruct, in-process): the studio's biased greedy reply is
transformers' own greedy decoding with the same bias (its SequenceBiasLogitsProcessor), alone and in the batch."""

from __future__ import annotations

import threading

import pytest
import torch

from generators.base import ChatMessage, SamplingParams, TextRequest
from generators.text.transformers_lm import TransformersLM
from tests.conftest import MODEL_CACHE
from webui.settings import DEFAULT_MODEL, default_models

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smol() -> TransformersLM:
    # float32 weights: the two rows of the batch compute what each computes alone up to float summation order
    options = {**default_models()[0].options, "quantization": "none", "dtype": "float32"}
    gen = TransformersLM(DEFAULT_MODEL, options, cache_dir=str(MODEL_CACHE))
    gen.load()
    yield gen
    gen.unload()


def reference(lm: TransformersLM, request: TextRequest) -> list[int]:
    ids, _ = lm.encode(request)
    bias = {(t,): float(b) for t, b in request.params.logit_bias.items()}
    out = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=request.params.max_new_tokens,
                            **({"sequence_bias": bias} if bias else {}))
    new = out[0, len(ids):].tolist()
    return new[:-1] if new and new[-1] in lm.decoder.eos else new


def test_banning_the_answer_token_changes_the_answer_as_transformers_does(smol: TransformersLM) -> None:
    ask = (ChatMessage("user", "What is the capital of France? Answer in one word."),)
    plain = TextRequest(messages=ask, params=SamplingParams(temperature=0, max_new_tokens=16))
    greedy = reference(smol, plain)
    paris = next((t for t in greedy if "Paris" in smol.tokenizer.decode([t])), greedy[0])  # the answer's token
    banned = TextRequest(messages=ask, params=SamplingParams(temperature=0, max_new_tokens=16, logit_bias={paris: -100}))
    expected = reference(smol, banned)
    assert paris not in expected
    results: dict[int, str] = {}
    start = threading.Barrier(2)

    def run(i: int, request: TextRequest) -> None:
        start.wait()
        results[i] = smol.generate(request)[0]

    threads = [threading.Thread(target=run, args=(0, plain)), threading.Thread(target=run, args=(1, banned))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results[0] == smol.tokenizer.decode(greedy, skip_special_tokens=True)  # the batch's other row: untouched
    assert results[1] == smol.tokenizer.decode(expected, skip_special_tokens=True) != results[0]
