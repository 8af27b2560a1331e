"""OpenAI's logit bias, presence/frequency penalties and log-probabilities, alone and inside the plugin (batched
and not), on a tiny random-weight Llama."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from generators.base import ChatMessage, SamplingParams, TextRequest
from generators.text.decoding import Sampler
from generators.text.logits_processing import LogitBias, PresenceFrequencyPenalty, score_prompt, score_token
from generators.text.transformers_lm import TransformersLM


def test_penalties_follow_openais_formula() -> None:
    scores = torch.zeros(1, 6)
    ids = torch.tensor([[5, 5, 1, 2, 2, 2, 3]])  # prompt [5, 5]; generated 1, 2, 2, 2, 3
    out = PresenceFrequencyPenalty(presence=0.5, frequency=0.25, prompt_len=2)(ids, scores)
    # token j: -(count * 0.25 + (count > 0) * 0.5); the prompt's 5 does not count
    assert out[0].tolist() == pytest.approx([0, -0.75, -1.25, -0.75, 0, 0])
    negative = PresenceFrequencyPenalty(presence=-1.0, frequency=0.0, prompt_len=2)(ids, scores)
    assert negative[0, 2].item() == pytest.approx(1.0)  # negative values make repeats likelier


def test_the_sampler_applies_them_and_records_logprobs() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    plain = Sampler(SamplingParams(temperature=0), seed=0, device="cpu")
    assert plain.plain_greedy and plain(torch.tensor([[0, 0]]), logits) == 0
    penalised = Sampler(SamplingParams(temperature=0, frequency_penalty=1.0), seed=0, device="cpu", prompt_len=1)
    assert not penalised.plain_greedy
    assert penalised(torch.tensor([[9, 0]]), logits) == 1  # 3.0 - 1 < 2.5
    assert penalised(torch.tensor([[0]]), logits) == 0  # the prompt's 0 does not count
    scored = Sampler(SamplingParams(temperature=0), seed=0, device="cpu", logprobs=2)
    assert not scored.plain_greedy  # the batcher hands its rows to the sampler
    scored(torch.tensor([[0]]), logits)
    entry = scored.take_scored()[0]
    expected = torch.log_softmax(logits[0], -1)
    assert entry.token_id == 0 and entry.logprob == pytest.approx(expected[0].item())
    assert [i for i, _ in entry.top] == [0, 1] and scored.take_scored() == []


def test_logit_bias_is_added_to_the_raw_logits_and_bans_or_forces() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    ids = torch.tensor([[0, 1]])
    assert LogitBias({0: -100, 3: 5})(ids, logits)[0].tolist() == pytest.approx([-97.0, 2.5, 0.0, 4.0])
    banned = Sampler(SamplingParams(temperature=0, logit_bias={0: -100}), seed=0, device="cpu")
    assert not banned.plain_greedy  # the batcher hands its row to its own sampler
    assert banned(ids, logits) == 1
    hot = Sampler(SamplingParams(temperature=2.0, top_k=0, top_p=1.0, logit_bias={0: -100}), seed=0, device="cpu")
    assert 0 not in {hot(ids, logits) for _ in range(300)}  # sampled at temperature 2 and still never drawn
    forced = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, logit_bias={3: 100}), seed=0, device="cpu")
    assert {forced(ids, logits) for _ in range(100)} == {3}
    scored = Sampler(SamplingParams(temperature=0, logit_bias={0: -100}), seed=0, device="cpu", logprobs=1)
    assert scored(ids, logits) == 1  # logprobs stay the model's own, as for the other samplers
    assert scored.take_scored()[0].top[0][0] == 0


def test_top_p_zero_keeps_only_the_likeliest_token() -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0]])
    only_top = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=0.0), seed=0, device="cpu")
    assert {only_top(torch.tensor([[0]]), logits) for _ in range(50)} == {0}


def test_score_prompt_matches_score_token() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    ids = [1, 7, 3, 9]
    scored = score_prompt(logits, ids, 3)
    assert scored[0] is None
    for t in range(1, 4):
        one = score_token(logits[t - 1:t], ids[t], 3)
        assert scored[t].logprob == pytest.approx(one.logprob) and scored[t].top == one.top


@pytest.fixture(scope="module", params=[1, 4], ids=["alone", "batched"])
def tiny_lm(request, tiny_model_dir: Path) -> TransformersLM:  # type: ignore[no-untyped-def]
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": request.param})
    gen.load()
    yield gen
    gen.unload()


def test_plugin_returns_real_logprobs(tiny_lm: TransformersLM) -> None:
    request = TextRequest(prompt="Once upon a time", params=SamplingParams(temperature=0, max_new_tokens=6), logprobs=3)
    chunks = list(tiny_lm.stream(request))
    text = "".join(c.text for c in chunks)
    entries = [e for c in chunks for e in c.logprobs]
    assert len(entries) == chunks[-1].stats.completion_tokens
    # the first token's logprob is the model's own for that position
    ids, _ = tiny_lm.encode(request)
    with torch.inference_mode():
        first = torch.log_softmax(tiny_lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    assert entries[0].logprob == pytest.approx(first.max().item(), abs=1e-4)
    assert entries[0].top[0][1] == pytest.approx(entries[0].logprob, abs=1e-5)  # greedy: the likeliest
    assert all(len(e.top) == 3 and e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries).strip() in text.strip() or text.strip() in "".join(e.token for e in entries)
    unscored = list(tiny_lm.stream(TextRequest(prompt="Once upon a time", params=request.params)))
    assert "".join(c.text for c in unscored) == text and not any(c.logprobs for c in unscored)


def test_plugin_penalties_change_greedy_output(tiny_lm: TransformersLM) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=24)
    ids_plain = tiny_lm.generate(TextRequest(prompt="the the the", params=params, logprobs=0))[1]
    plain = [e for c in tiny_lm.stream(TextRequest(prompt="the the the", params=params, logprobs=0)) for e in c.logprobs]
    strong = params.model_copy(update={"presence_penalty": 2.0, "frequency_penalty": 2.0})
    penalised = [e for c in tiny_lm.stream(TextRequest(prompt="the the the", params=strong, logprobs=0)) for e in c.logprobs]
    assert ids_plain.stats is not None
    assert [e.token for e in plain] != [e.token for e in penalised]
    repeats = len(penalised) - len({e.token for e in penalised})
    assert repeats < len(plain) - len({e.token for e in plain}) or repeats == 0


def test_prompt_logprobs_agree_with_the_log_likelihood(tiny_lm: TransformersLM) -> None:
    text = "A small test of scoring."
    scored = tiny_lm.prompt_logprobs(text, top=2)
    assert all(e.logprob is not None and len(e.top) == 2 for e in scored)  # the first follows the start of text
    assert "".join(e.token for e in scored) == text
    nll, n = tiny_lm.log_likelihood(text)
    assert n == len(scored) and -sum(e.logprob for e in scored) == pytest.approx(nll, rel=1e-4)
    assert math.isfinite(nll)


def test_a_conversation_of_only_instructions_gets_a_reply(tiny_lm: TransformersLM) -> None:
    request = TextRequest(messages=(ChatMessage("system", "Say hello."),), params=SamplingParams(max_new_tokens=3))
    _, last = tiny_lm.generate(request)
    assert last.stats is not None and last.stats.completion_tokens > 0


def greedy_reference(lm: TransformersLM, request: TextRequest) -> list[int]:
    """transformers' own greedy decoding of `request`, the bias through its SequenceBiasLogitsProcessor."""
    ids, _ = lm.encode(request)
    bias = {(t,): float(b) for t, b in request.params.logit_bias.items()}
    out = lm.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=request.params.max_new_tokens,
                            pad_token_id=lm.tokenizer.eos_token_id, **({"sequence_bias": bias} if bias else {}))
    new = out[0, len(ids):].tolist()
    return new[:-1] if new and new[-1] in lm.decoder.eos else new


def biased(request: TextRequest, bias: dict[int, float]) -> TextRequest:
    return TextRequest(prompt=request.prompt, messages=request.messages, logprobs=request.logprobs,
                       params=request.params.model_copy(update={"logit_bias": bias}))


def test_plugin_logit_bias_bans_the_greedy_token_and_forces_another(tiny_lm: TransformersLM) -> None:
    plain = TextRequest(prompt="Once upon a time", params=SamplingParams(temperature=0, max_new_tokens=12))
    greedy = greedy_reference(tiny_lm, plain)
    assert tiny_lm.generate(plain)[0] == tiny_lm.tokenizer.decode(greedy)
    first = greedy[0]
    ban = biased(plain, {first: -100})
    expected = greedy_reference(tiny_lm, ban)
    text, last = tiny_lm.generate(ban)
    assert text == tiny_lm.tokenizer.decode(expected) and text != tiny_lm.tokenizer.decode(greedy)
    assert first not in expected and last.stats is not None and last.stats.completion_tokens == len(expected)
    sea = tiny_lm.tokenizer.encode(" sea", add_special_tokens=False)[0]
    sampled = TextRequest(prompt="Once upon a time", params=SamplingParams(temperature=1.0, seed=3, max_new_tokens=6,
                                                                           logit_bias={sea: 100}))
    text, last = tiny_lm.generate(sampled)
    assert text == tiny_lm.tokenizer.decode([sea] * 6) and last.stats is not None and last.stats.completion_tokens == 6


def test_rows_of_one_batch_each_keep_their_own_bias(tiny_lm: TransformersLM) -> None:
    """Requests with and without a bias decoded at once (in one batch where the model batches): each row
    gives what transformers' greedy decoding gives for that request alone."""
    prompt = TextRequest(prompt="The sea and the ships", params=SamplingParams(temperature=0, max_new_tokens=30))
    greedy = greedy_reference(tiny_lm, prompt)
    second = greedy_reference(tiny_lm, biased(prompt, {greedy[0]: -100}))  # what comes when its first choice goes
    sea = tiny_lm.tokenizer.encode(" sea", add_special_tokens=False)[0]
    requests = [prompt, biased(prompt, {greedy[0]: -100}), biased(prompt, {sea: 100}),
                biased(prompt, {greedy[0]: -100, second[0]: -100})]
    expected = [tiny_lm.tokenizer.decode(greedy_reference(tiny_lm, r)) for r in requests]
    assert len(set(expected)) == 4  # four different replies
    results: dict[int, str] = {}
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        start.wait()
        results[i] = tiny_lm.generate(requests[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results.get(i) for i in range(len(requests))] == expected
    batcher: Any = tiny_lm.decoder.batcher
    assert batcher is None or batcher.max_seen_batch >= 2  # batched: they really shared steps
