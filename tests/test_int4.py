"""4-bit weight-only Linear layers (generators/text/engine/int4.py) on PyTorch's CPU int4 kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from generators.text.engine.int4 import (
    DENSE_FROM_ROWS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    dense_unpacking_works,
    dequantize_weight,
    int4_supported,
    quantize_int4,
    quantize_weight,
    unpack_int4,
)

pytestmark = pytest.mark.skipif(not int4_supported(), reason="this torch build has no CPU int4 kernel")


def unpacked_integers(weight: torch.Tensor, scales_and_zeros: torch.Tensor, group: int = 32) -> torch.Tensor:
    """The 4-bit integers the quantizer chose, recomputed from its stored scales and offsets."""
    n, k = weight.shape
    sz = scales_and_zeros.float().transpose(0, 1)
    w = weight.reshape(n, k // group, group)
    return torch.round((w - sz[..., 1:]) / sz[..., :1] + 8).clamp(0, 15).reshape(n, k)


def test_weights_already_on_a_4bit_grid_come_back_exactly() -> None:
    """A Q4_1-style weight (every group uses levels 0 and 15, bfloat16 scale and offset) is stored
    without a second rounding: dequantized, it is the same weight."""
    g = torch.Generator().manual_seed(0)
    n, k = 48, 128
    q = torch.randint(0, 16, (n, k // 32, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    scale = (torch.rand(n, k // 32, 1, generator=g) * 0.01 + 0.001).bfloat16().float()
    zero = (torch.randn(n, k // 32, 1, generator=g) * 0.01).bfloat16().float()
    weight = ((q.float() - 8) * scale + zero).reshape(n, k)
    packed, sz = quantize_weight(weight)
    restored = dequantize_weight(unpacked_integers(weight, sz), sz)
    torch.testing.assert_close(restored, weight, rtol=0, atol=1e-7)


def test_int4_linear_multiplies_by_its_dequantized_weight_and_stays_near_the_float_layer() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(256, 96, bias=True)
    q4 = Int4Linear(layer)
    _, sz = quantize_weight(layer.weight)
    deq = dequantize_weight(unpacked_integers(layer.weight.detach(), sz), sz)
    weight = layer.weight.detach()
    weight_error = float((deq - weight).norm() / weight.norm())
    assert 0.01 < weight_error < 0.12  # really 4 bits (16 levels per group of 32), not a float copy
    x = torch.randn(3, 5, 256)  # any leading shape
    with torch.inference_mode():
        out, exact = q4(x), nn.functional.linear(x, deq, layer.bias)
    assert out.shape == (3, 5, 96) and out.dtype == torch.float32
    # The kernel differs from the dequantized float layer only by its bfloat16 activations.
    assert float((out - exact).norm() / exact.norm()) < 0.01
    assert q4.packed_weight.numel() * q4.packed_weight.element_size() == 256 * 96 // 2


def test_unpacking_reads_the_kernels_layout_and_a_prefill_takes_the_dense_path() -> None:
    """`unpack_int4` gives back the dequantized weights (64-row blocks, two rows per byte) where this
    CPU's kernel packs that layout; from DENSE_FROM_ROWS rows a layer multiplies by them densely,
    agreeing with the int4 kernel up to its bfloat16 output rounding. Where the kernel packs
    another layout, `dense_unpacking_works()` says so and the prefill stays on the kernel."""
    torch.manual_seed(3)
    layer = nn.Linear(128, 192, bias=True)
    packed, sz = quantize_weight(layer.weight)
    deq = dequantize_weight(unpacked_integers(layer.weight.detach(), sz), sz)
    if dense_unpacking_works():
        torch.testing.assert_close(unpack_int4(packed, sz).float().t(), deq, rtol=0.01, atol=1e-3)  # bfloat16, (K, N)
    else:  # this CPU's kernel packs another layout (AVX2 vs AVX-512): the check says so, and the prefill
        # below must then stay on the kernel and still give its results
        assert not torch.allclose(unpack_int4(packed, sz).float().t(), deq, rtol=0.01, atol=1e-3)
    q4 = Int4Linear(layer)
    x = torch.randn(DENSE_FROM_ROWS + 7, 128)
    with torch.inference_mode():
        dense = q4(x)
        kernel = torch._weight_int4pack_mm_for_cpu(x.bfloat16(), q4.packed_weight, 32, q4.scales_and_zeros).float() + layer.bias
    assert dense.shape == (DENSE_FROM_ROWS + 7, 192) and dense.dtype == torch.float32
    assert float((dense - kernel).abs().max()) < 0.02 * float(kernel.abs().max())


def test_int8_linear_keeps_a_row_scale_and_stays_within_a_percent() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(64, 500, bias=False)
    q8 = Int8Linear(layer)
    assert q8.weight_int8.dtype == torch.int8 and q8.scales.shape == (500,)
    x = torch.randn(7, 64)
    with torch.inference_mode():
        ref, out = layer(x), q8(x)
    assert float((out - ref).norm() / ref.norm()) < 0.01


def test_quantize_int4_gives_head_and_embedding_8_bits_sharing_their_rows_when_tied() -> None:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"tie_word_embeddings": True})()
            self.embed = nn.Embedding(100, 64)
            self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.Linear(50, 50))
            self.head = nn.Linear(64, 100, bias=False)
            self.head.weight = self.embed.weight

        def get_output_embeddings(self) -> nn.Module:
            return self.head

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

    model = Tiny()
    ids = torch.tensor([[3, 99, 0, 42]])
    with torch.inference_mode():
        want = model.embed(ids)
    counts = quantize_int4(model)
    assert counts == {"int4": 2, "int8": 1, "int8 embedding": 1}
    assert isinstance(model.body[0], Int4Linear) and isinstance(model.body[2], Int4Linear)
    assert type(model.body[3]) is nn.Linear  # 50 inputs do not divide into groups of 32: left in float
    assert isinstance(model.head, Int8Linear) and model.config.tie_word_embeddings is False
    assert isinstance(model.embed, Int8Embedding) and model.embed.weight_int8 is model.head.weight_int8  # one copy
    with torch.inference_mode():
        got = model.embed(ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert float((got - want).norm() / want.norm()) < 0.01


def test_int8_embedding_of_an_untied_embedding_keeps_its_dtype_and_rows_within_a_percent() -> None:
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        embedding = nn.Embedding(300, 96).to(dtype)
        q8 = Int8Embedding.of(embedding)
        ids = torch.arange(300).view(3, 100)
        with torch.inference_mode():
            want, got = embedding(ids).float(), q8(ids)
        assert q8.weight_int8.dtype == torch.int8 and got.dtype == dtype
        assert float((got.float() - want).norm() / want.norm()) < 0.01
