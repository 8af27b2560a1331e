"""The lean Llama decoding step and its KV cache, against transformers' own forward."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from generators.text.engine.int4 import quantize_int4, use_bfloat16_activations
from generators.text.engine.kv_cache import KVCache
from generators.text.engine.measure import calibrate_row_padding
from generators.text.engine.onednn import onednn_bfloat16_available, pack_linear_layers
from generators.text.engine.step import LeanLlamaStep


def tiny_llama(**overrides: object) -> LlamaForCausalLM:
    torch.manual_seed(0)
    options = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, **overrides}
    config = LlamaConfig(**options)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("overrides", [{}, {"num_key_value_heads": 4, "attention_bias": True, "mlp_bias": True},
                                       {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
                                       {"int4": True, "num_key_value_heads": 4, "head_dim": 16}, {"int4": True},
                                       {"int4": "bfloat16", "num_key_value_heads": 4, "head_dim": 16},
                                       {"dynamic-int8": True}, {"bfloat16": True},
                                       {"bfloat16": "onednn", "attention_bias": True, "tie_word_embeddings": False},
                                       {"padded": True, "attention_bias": True}],
                         ids=["gqa", "biases", "rope-scaling", "int4", "int4-k-v-of-32-rows", "int4-bfloat16-activations",
                              "dynamic-int8", "bfloat16", "bfloat16-onednn-packed", "rows-padded-to-16"])
def test_lean_steps_give_transformers_logits_and_cache_on_a_left_padded_batch(overrides: dict, native_layers: object) -> None:
    """Three prompts of different lengths, left-padded as the batcher lays them out, decoded 6 steps:
    every step's logits equal transformers' forward with the same mask, positions and cache within
    1e-5 (float sums in another order), and so do the cached keys and values. q/k/v and gate/up are
    fused into one matmul each for float and int4 weights (the model's own layers become views of
    the fused weights); dynamic int8 layers run one by one. "rows-padded-to-16": the batch of 3 runs
    its matmuls on 16 rows, as it does where MKL is faster with 16 (`calibrate_row_padding`).
    The C++ layer loop runs alongside on its own cache and gives the Python loop's logits and cache
    bit for bit (same operators); projections made of several calls (dynamic int8, int4 k and v of 32
    rows) are a kind it does not know: those models keep the Python loop."""
    padded = overrides.pop("padded", False)
    quantize = {k: overrides.pop(k) for k in ("int4", "dynamic-int8", "bfloat16") if k in overrides}
    model = tiny_llama(**overrides)
    tolerance = 1e-5
    if "bfloat16" in quantize:  # bfloat16 sums in another order differ in the third digit
        model, tolerance = model.to(torch.bfloat16), 3e-2
        if quantize["bfloat16"] == "onednn":  # every Linear, the untied head too, packed for oneDNN
            if not onednn_bfloat16_available():
                pytest.skip("this CPU has no oneDNN bfloat16 kernels (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
            assert pack_linear_layers(model) == 7 * len(model.model.layers) + 1
    if "int4" in quantize:
        quantize_int4(model)
        if quantize["int4"] == "bfloat16":
            use_bfloat16_activations(model)
            tolerance = 3e-2
    if "dynamic-int8" in quantize:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    lean = LeanLlamaStep(model, row_padding={3: 16} if padded else None)
    native = LeanLlamaStep(model, row_padding={3: 16} if padded else None, native=native_layers)
    if "int4" in quantize and lean.attention is not None:
        # the AVX2 attention (float32 rows on an AVX2 CPU) sums in another order than transformers' SDPA, and
        # PyTorch's int4 kernel then rounds its bfloat16 inputs the other way now and then
        tolerance = 3e-2
    # projections of several calls (dynamic int8; int4 k and v of 32 rows each) are not a kind the C++ loop knows
    several_calls = "dynamic-int8" in quantize or ("int4" in quantize and lean.fused < 2 * len(model.model.layers))
    assert (native.native is None) == several_calls, native.native_reason
    assert lean.row_padding == ({3: 16} if padded else {})  # tiny layers are never padded by measurement
    layers = len(model.model.layers)
    # int4 rows fuse in blocks of 64: k and v of 32 rows (2 heads of 16) stay separate calls; dynamic int8 never fuses
    int4_fused = 2 * layers if overrides.get("num_key_value_heads") == 4 else layers
    expected = {"dynamic-int8": 0, "bfloat16": 0 if quantize.get("bfloat16") == "onednn" else 2 * layers, "int4": int4_fused}
    assert lean.fused == next((expected[k] for k in quantize), 2 * layers)
    prompts = [[5, 9, 3, 7, 1, 2, 8], [4, 4], [10, 20, 30, 40]]
    width = max(map(len, prompts))
    ids = torch.zeros((3, width), dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    positions = torch.zeros((3, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
        positions[i, width - len(p):] = torch.arange(len(p))
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        cache, reference = KVCache(layers, capacity=width + 2), DynamicCache(layers)  # the lean cache must grow
        native_cache = KVCache(layers, capacity=width + 2)
        lengths = torch.tensor([[len(p)] for p in prompts])
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(6):
            mask = torch.cat([mask, torch.ones((3, 1), dtype=torch.long)], dim=1)
            got = lean(token, lengths, mask, cache)
            assert torch.equal(native(token, lengths, mask, native_cache), got)
            ref = model(input_ids=token, attention_mask=mask, position_ids=lengths, past_key_values=reference, use_cache=True)
            reference = ref.past_key_values
            assert torch.allclose(got, ref.logits[:, -1], atol=tolerance, rtol=0), float((got - ref.logits[:, -1]).abs().max())
            token, lengths = got.argmax(-1, keepdim=True), lengths + 1
        assert cache.width == mask.shape[1] and cache.capacity >= cache.width
        for (k_native, v_native), (k, v) in zip(native_cache.layers(), cache.layers(), strict=True):
            assert torch.equal(k_native, k) and torch.equal(v_native, v)
        for (k, v), layer in zip(cache.layers(), reference.layers, strict=True):
            keep = mask.bool()[:, None, :, None]  # padded slots: ours are zeros, transformers' hold whatever
            assert torch.allclose(k * keep, layer.keys * keep, atol=tolerance)
            assert torch.allclose(v * keep, layer.values * keep, atol=tolerance)


def test_kv_cache_grows_merges_selects_and_drops_columns_keeping_its_contents() -> None:
    def layer(rows: int, width: int, base: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        k = base + torch.arange(rows * 2 * width * 3, dtype=torch.float32).view(rows, 2, width, 3)
        return [(k, -k)]

    a = KVCache(layer(2, 4, 0.0), capacity=5)
    original = a.layers()[0][0].clone()
    a.reserve(10)
    assert a.capacity >= 14 and torch.equal(a.layers()[0][0], original)
    a.append(0, torch.ones((2, 2, 1, 3)), -torch.ones((2, 2, 1, 3)))
    a.advance()
    assert a.width == 5 and torch.equal(a.layers()[0][0][:, :, 4], torch.ones((2, 2, 3)))
    pad_old, pad_new = a.merge(layer(1, 7, 1000.0))  # wider rows join: the old rows get 2 columns of padding
    assert (pad_old, pad_new) == (2, 0) and a.rows == 3 and a.width == 7
    k = a.layers()[0][0]
    assert torch.equal(k[:2, :, :2], torch.zeros((2, 2, 2, 3))) and torch.equal(k[:2, :, 2:6], original)
    assert torch.equal(k[2], layer(1, 7, 1000.0)[0][0][0])
    a.select(torch.tensor([0, 2]))
    assert a.rows == 2 and torch.equal(a.layers()[0][0][0, :, 2:6], original[0])
    a.drop_left(2)
    assert a.width == 5 and torch.equal(a.layers()[0][0][0, :, :4], original[0])
    assert torch.equal(a.layers()[0][1], -a.layers()[0][0])


@pytest.mark.parametrize("shapes", [[(2, 3), (2, 3)], [(2, 3), (4, 5)]], ids=["stacked", "per-layer"])
def test_kv_cache_step_views_write_the_next_column_of_every_layer(shapes: list[tuple[int, int]]) -> None:
    """Layers of one shape share one buffer; layers of different shapes (some architectures vary
    heads per layer) keep their own, with the same views."""
    layers = [(torch.randn(2, h, 4, d), torch.randn(2, h, 4, d)) for h, d in shapes]
    cache = KVCache(layers, capacity=4)
    assert (cache._stacked is not None) == (len(set(shapes)) == 1)
    cache.reserve(1)
    key_columns, value_columns, keys, values = cache.step_views()
    for index, (h, d) in enumerate(shapes):
        key_columns[index].copy_(torch.full((2, h, 1, d), 7.0))
        value_columns[index].copy_(torch.full((2, h, 1, d), -7.0))
        assert keys[index].shape == (2, h, 5, d) and torch.equal(keys[index][:, :, :4], layers[index][0])
    cache.advance()
    for (k, v), (k_old, v_old) in zip(cache.layers(), layers, strict=True):
        assert torch.equal(k[:, :, :4], k_old) and torch.equal(v[:, :, :4], v_old)
        assert bool((k[:, :, 4] == 7).all()) and bool((v[:, :, 4] == -7).all())
    capacity = cache.capacity
    cache.select(torch.tensor([1]))  # a row leaves: the other keeps its contents, the capacity stays
    assert cache.rows == 1 and cache.capacity == capacity and cache.width == 5
    for (k, v), (k_old, v_old) in zip(cache.layers(), layers, strict=True):
        assert torch.equal(k[0, :, :4], k_old[1]) and torch.equal(v[0, :, :4], v_old[1]) and bool((k[0, :, 4] == 7).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_row_through_matrix_vector_gives_transformers_logits(dtype: torch.dtype) -> None:
    """A batch of one row takes `torch.mv` for every float matmul where that is faster (bfloat16 on
    this machine): forced here, its logits equal transformers' (1e-5 float32, 3e-2 bfloat16)."""
    model = tiny_llama(attention_bias=True).to(dtype)
    lean = LeanLlamaStep(model, row_padding={}, matrix_vector=True)
    assert all(p.one_row is not p.call for p in lean._projections())
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    with torch.inference_mode():
        ids = torch.tensor([[5, 9, 3, 7]])
        out = model(input_ids=ids, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        cache, reference = KVCache(layers), DynamicCache(layers)
        token, mask = out.logits[:, -1].argmax(-1, keepdim=True), torch.ones((1, 4), dtype=torch.long)
        for position in range(4, 8):
            mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
            got = lean(token, torch.tensor([[position]]), mask, cache)
            ref = model(input_ids=token, attention_mask=mask, position_ids=torch.tensor([[position]]),
                        past_key_values=reference, use_cache=True)
            reference = ref.past_key_values
            want = ref.logits[:, -1].float()
            assert torch.allclose(got.float(), want, atol=tolerance, rtol=0), float((got.float() - want).abs().max())
            token = want.argmax(-1, keepdim=True)


def test_row_padding_is_measured_on_big_float_matrices_only() -> None:
    assert calibrate_row_padding(torch.randn(64, 32)) == {}
    padding = calibrate_row_padding(torch.randn(1024, 1024))
    assert set(padding.values()) <= {16} and all(2 <= rows < 16 for rows in padding)


def test_other_architectures_are_left_to_transformers_with_a_reason() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    assert "gpt2" in LeanLlamaStep.unsupported(gpt2)
    assert LeanLlamaStep.unsupported(tiny_llama()) is None
    assert "silu" in LeanLlamaStep.unsupported(tiny_llama(hidden_act="gelu"))
    with pytest.raises(ValueError, match="gpt2"):
        LeanLlamaStep(gpt2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_c_plus_plus_loop_decodes_one_row_through_matrix_vector_products_as_python_does(dtype: torch.dtype,
                                                                                         native_layers: object) -> None:
    """One row with `torch.mv` projections (biases too), as bfloat16 models decode alone on this
    machine: the C++ loop's logits equal the Python loop's bit for bit, step after step."""
    model = tiny_llama(attention_bias=True, mlp_bias=True).to(dtype)
    steps = [LeanLlamaStep(model, matrix_vector=True, native=op) for op in (None, native_layers)]
    assert steps[1].native is not None and all(p.matrix_vector for p in steps[1]._projections())
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([[3, 1, 4, 1, 5]]), use_cache=True)
        caches = [KVCache([(layer.keys, layer.values) for layer in out.past_key_values.layers]) for _ in steps]
        token, mask = torch.tensor([[9]]), torch.ones((1, 5), dtype=torch.long)
        for position in range(5, 10):
            mask = torch.cat([mask, torch.ones((1, 1), dtype=torch.long)], dim=1)
            position_ids = torch.tensor([[position]])
            python, native = (step(token, position_ids, mask, cache) for step, cache in zip(steps, caches, strict=True))
            assert torch.equal(python, native)
            token = python.argmax(-1, keepdim=True)


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(tmp_path: object) -> None:
    """torch's extension builder waits for its lock file forever; one older than any build is stale."""
    import os
    import time

    from generators.text.engine.native import STALE_LOCK_SECONDS, _clear_stale_lock

    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "lock").touch()
    old = time.time() - STALE_LOCK_SECONDS - 60
    os.utime(stale / "lock", (old, old))
    _clear_stale_lock(stale)
    _clear_stale_lock(fresh)
    _clear_stale_lock(tmp_path)  # no lock: nothing to do
    assert not (stale / "lock").exists() and (fresh / "lock").exists()
