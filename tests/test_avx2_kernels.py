"""The project's AVX2 int4/int8 kernels (csrc/avx2_kernels.cpp) and their layers (engine/avx2.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from generators.text.engine import avx2
from generators.text.engine.int4 import (
    DENSE_FROM_ROWS,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    dequantize_weight,
    int4_integers,
    int4_supported,
    quantize_int4,
)

pytestmark = pytest.mark.skipif(not int4_supported(), reason="this torch build has no CPU int4 kernel")


@pytest.fixture(scope="module")
def kernels(native_layers: object) -> object:
    """torch.ops.aigc with the kernels (the native library is built by the session fixture)."""
    ops = avx2.kernels()
    assert ops is not None
    if not ops.quant_kernels_supported():
        pytest.skip("this CPU has no AVX2/FMA")
    return ops


def test_packing_keeps_the_integers_and_scales_of_the_int4_layer() -> None:
    """Moving an `Int4Linear` into the kernel's layout keeps its weights exactly: unpacked, they are
    the weights PyTorch's packing holds (64-row blocks, two rows per byte), for every row and group."""
    torch.manual_seed(0)
    layer = Int4Linear(nn.Linear(96, 192))  # whole blocks of PyTorch's packing (32 or 64 rows), 24 tiles of 8 here
    q = int4_integers(layer.packed_weight, 96)
    assert q.shape == (192, 96) and int(q.min()) == 0 and int(q.max()) == 15
    qweight, scales = avx2.pack_int4(q, layer.scales_and_zeros)
    assert qweight.shape == (24, 3, 32) and scales.shape == (24, 3, 16)
    want = dequantize_weight(q, layer.scales_and_zeros)
    assert torch.equal(avx2.unpack_int4_avx2(qweight, scales), want)
    # and PyTorch's own kernel multiplies by the same weights (so `int4_integers` reads its layout), up to
    # its bfloat16 activations; a misread layout is off by the size of the outputs
    x = torch.randn(3, 96)
    with torch.inference_mode():
        got, exact = layer(x), x.bfloat16().float() @ want.T + layer.bias
    assert float((got - exact).norm() / exact.norm()) < 0.01


@pytest.mark.parametrize("rows", [1, 2, 7, 8, 9, 16, 17, 33])
def test_int4_kernel_multiplies_by_the_dequantized_weight(kernels: object, rows: int) -> None:
    """Every row count (a pass takes up to 8 rows: 8, 9, 16, 17 cross its edges) and a bias: the
    kernel equals the float matmul by the dequantized weight up to float32 summation order."""
    torch.manual_seed(rows)
    dense = nn.Linear(128, 64, bias=True)
    layer = avx2.Int4Avx2Linear(Int4Linear(dense))
    weight = avx2.unpack_int4_avx2(layer.qweight, layer.scales)
    x = torch.randn(rows, 128)
    with torch.inference_mode():
        got = layer(x)
    want = x @ weight.T + dense.bias.detach()
    assert got.shape == (rows, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a 4-bit layer, not a float copy: it is near the float layer, not equal to it
    with torch.no_grad():
        assert 0.005 < float((got - dense(x)).norm() / dense(x).norm()) < 0.2


def test_int4_layer_keeps_the_input_dtype_and_shape_and_a_prefill_goes_dense(kernels: object) -> None:
    torch.manual_seed(0)
    layer = avx2.Int4Avx2Linear(Int4Linear(nn.Linear(64, 128, bias=False)))
    x = torch.randn(2, 3, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
        assert out.shape == (2, 3, 128) and out.dtype == torch.bfloat16
        many = torch.randn(DENSE_FROM_ROWS, 64)
        dense_path = layer(many)
        kernel_path = torch.ops.aigc.int4_linear(many, layer.qweight, layer.scales)
    torch.testing.assert_close(dense_path, kernel_path, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 5, 8, 16])
def test_int8_kernel_and_the_tied_embedding(kernels: object, rows: int) -> None:
    """The 8-bit head on the kernel equals its dequantized rows (101 outputs: padded to 13 tiles and cut
    back), and an embedding that shared the head's int8 rows reads the same rows from the new tiles."""
    torch.manual_seed(0)
    dense = nn.Linear(48, 101, bias=False)
    head = Int8Linear(dense)
    embedding = Int8Embedding(head.weight_int8, head.scales, torch.float32)
    new_head = avx2.Int8Avx2Linear(head)
    tiled = avx2.TiledInt8Embedding(new_head, embedding)
    x = torch.randn(rows, 48)
    rows_float = head.weight_int8.float() * head.scales.float()[:, None]
    with torch.inference_mode():
        torch.testing.assert_close(new_head(x), x @ rows_float.T, rtol=1e-5, atol=1e-5)
        ids = torch.tensor([[0, 7, 8, 100], [55, 3, 99, 1]])
        assert torch.equal(tiled(ids), embedding(ids))


def test_a_quantized_model_converts_without_a_second_copy_and_computes_the_same(kernels: object) -> None:
    """`use_avx2_kernels` on a small int4 model with a tied head: every int4 layer and the head move,
    the embedding reads the head's tiles (one int8 copy), and the logits stay those of the int4 model
    up to its bfloat16 activations."""

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(40, 64)
            self.up, self.down = nn.Linear(64, 128), nn.Linear(128, 64)
            self.head = nn.Linear(64, 40, bias=False)
            self.head.weight = self.embed.weight

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

        def get_output_embeddings(self) -> nn.Module:
            return self.head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.down(torch.relu(self.up(self.embed(ids)))))

    torch.manual_seed(0)
    model = Tiny().eval()
    quantize_int4(model)
    ids = torch.tensor([[1, 5, 9], [30, 2, 39]])
    with torch.inference_mode():
        before = model(ids)
        counts = avx2.use_avx2_kernels(model)
        after = model(ids)
    assert counts == {"int4": 2, "int8": 1, "embedding": 1}
    assert isinstance(model.up, avx2.Int4Avx2Linear) and isinstance(model.head, avx2.Int8Avx2Linear)
    assert model.embed.qweight is model.head.qweight
    assert not any(isinstance(m, (Int4Linear, Int8Linear, Int8Embedding)) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=0.02, atol=0.02)


def test_malformed_inputs_are_refused_by_the_kernel(kernels: object) -> None:
    layer = avx2.Int4Avx2Linear(Int4Linear(nn.Linear(64, 64)))
    with pytest.raises(RuntimeError, match="input must be"):
        torch.ops.aigc.int4_linear(torch.randn(2, 32), layer.qweight, layer.scales)
    with pytest.raises(RuntimeError, match="scales must be"):
        torch.ops.aigc.int4_linear(torch.randn(2, 64), layer.qweight, layer.scales.float())


@pytest.mark.parametrize(("rows", "heads", "kv_heads", "width", "head_dim"),
                         [(1, 9, 3, 1, 64), (3, 9, 3, 37, 64), (16, 4, 4, 200, 32), (2, 8, 1, 130, 256)])
def test_decode_attention_equals_scaled_dot_product_attention(kernels: object, rows: int, heads: int, kv_heads: int,
                                                              width: int, head_dim: int) -> None:
    """One query per row against the KV cache's views (a wider buffer, so strided), grouped-query heads, a
    left-padding mask with different padding per row, and no mask: the same as PyTorch's attention."""
    torch.manual_seed(width)
    capacity = width + 11
    keys = torch.randn(rows, kv_heads, capacity, head_dim)[:, :, :width]
    values = torch.randn(rows, kv_heads, capacity, head_dim)[:, :, :width]
    qk = torch.randn(rows, heads + kv_heads, 1, head_dim)  # the step's q is a view of q and k rows
    q = qk[:, :heads]
    mask = torch.ones(rows, 1, 1, width, dtype=torch.bool)
    for row in range(rows):
        mask[row, ..., :min(row * 3, width - 1)] = False  # row r: its first 3r columns are padding
    scale = head_dim ** -0.5
    sdpa = torch.nn.functional.scaled_dot_product_attention
    for m in (mask, None):
        got = torch.ops.aigc.decode_attention(q, keys, values, m, scale)
        want = sdpa(q, keys, values, attn_mask=m, scale=scale, enable_gqa=heads != kv_heads)
        assert got.shape == want.shape == (rows, heads, 1, head_dim)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decode_attention_refuses_what_it_does_not_compute(kernels: object) -> None:
    q, kv = torch.randn(1, 2, 1, 12), torch.randn(1, 2, 5, 12)
    with pytest.raises(RuntimeError, match="shapes"):  # a head size that is not a multiple of 8
        torch.ops.aigc.decode_attention(q, kv, kv, None, 1.0)
    q, kv = torch.randn(1, 2, 1, 16, dtype=torch.bfloat16), torch.randn(1, 2, 5, 16, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.aigc.decode_attention(q, kv, kv, None, 1.0)
