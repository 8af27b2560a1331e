"""int4 and int8 weight-only layers on the project's AVX2 kernels (csrc/avx2_kernels.cpp).

PyTorch's CPU int4 kernel has its fast path for AVX-512: on an AVX2-only CPU a batch of 8–16 rows costs
it nearly 8–16 single rows, and a continuous batch stops scaling (bench_int4_kernel.py). Its int8 kernel
(the 8-bit output head) behaves the same way. The project's kernels unpack each weight once per block
of up to 8 rows and multiply in float32 with FMAs, so rows of a batch share one read and one unpacking.

`use_avx2_kernels` converts a loaded int4 model's `Int4Linear` / `Int8Linear` layers (int4.py) into
`Int4Avx2Linear` / `Int8Avx2Linear` holding the same integers and scales in the kernels' layout (no
second copy), and an 8-bit embedding tied to the head into one reading the head's new layout. Same
weights, same grid: only the summation order differs from `Int4Linear` (float32 activations where it
takes bfloat16). The loader calls it where `avx2_kernels_pay()` (an AVX2 CPU without AVX-512, and the
native library built); tests compare the kernels with the dequantized weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hooks import has_hooks
from .int4 import (
    DENSE_FROM_ROWS,
    GROUP_SIZE,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    dense_unpacking_works,
    int4_integers,
    packing_block,
)

TILE = 8  # output columns per tile (one AVX2 vector of floats)

log = logging.getLogger(__name__)


def kernels() -> Any:
    """torch.ops.aigc with the kernels registered (the native library loaded), or None."""
    try:
        ops = torch.ops.aigc
        ops.int4_linear  # noqa: B018 — raises when the library is not loaded
        return ops
    except (AttributeError, RuntimeError):
        return None


def avx2_kernels_pay() -> bool:
    """The kernels are loaded, this CPU runs them (AVX2 and FMA), and PyTorch's own int4 kernel has no
    fast path here (no AVX-512)."""
    ops = kernels()
    return ops is not None and bool(ops.quant_kernels_supported()) and \
        torch.backends.cpu.get_cpu_capability() == "AVX2"


def pack_int4(q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) integers 0..15 and int4.py's scales_and_zeros (K/group, N, 2) → the kernel's (qweight
    int32 (N/8, K/32, 32), scales bfloat16 (N/8, K/32, 16))."""
    n, k = q.shape
    if group_size != GROUP_SIZE or n % TILE or k % group_size:
        raise ValueError(f"the AVX2 int4 kernel needs groups of {GROUP_SIZE} and a multiple of {TILE} outputs")
    tiles, groups = n // TILE, k // group_size
    nibbles = q.to(torch.int64).view(tiles, TILE, groups, group_size).permute(0, 2, 3, 1)  # (N/8, G, 32, 8)
    shifts = torch.arange(0, 4 * TILE, 4, dtype=torch.int64)
    words = (nibbles << shifts).sum(-1)  # < 2**32
    qweight = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).contiguous()
    sz = scales_and_zeros.to(torch.bfloat16).view(groups, tiles, TILE, 2).permute(1, 0, 3, 2)  # (N/8, G, 2, 8)
    return qweight, sz.reshape(tiles, groups, 2 * TILE).contiguous()


def unpack_int4_avx2(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight (N, K) the int4 kernel multiplies by (for a prefill's dense matmul and for tests)."""
    tiles, groups, _ = qweight.shape
    shifts = torch.arange(0, 4 * TILE, 4, dtype=torch.int64)
    q = (qweight.to(torch.int64) & 0xFFFFFFFF).unsqueeze(-1) >> shifts & 15  # (N/8, G, 32, 8)
    sz = scales.to(torch.float32).view(tiles, groups, 2, TILE)
    scale, zero = sz[:, :, 0].unsqueeze(2), sz[:, :, 1].unsqueeze(2)  # (N/8, G, 1, 8)
    w = (q.to(torch.float32) - 8) * scale + zero  # (N/8, G, 32, 8)
    return w.permute(0, 3, 1, 2).reshape(tiles * TILE, groups * GROUP_SIZE)


def pack_int8(weight_int8: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int4.py's int8 rows (N, K) and per-row bfloat16 scales (N,) → the kernel's (qweight (N/8, K, 8),
    scales (N/8, 8)); N is padded to a multiple of 8 with zero rows."""
    n, k = weight_int8.shape
    pad = -n % TILE
    if pad:
        weight_int8 = torch.cat([weight_int8, weight_int8.new_zeros((pad, k))])
        scales = torch.cat([scales, scales.new_zeros(pad)])
    tiles = (n + pad) // TILE
    qweight = weight_int8.view(tiles, TILE, k).transpose(1, 2).contiguous()
    return qweight, scales.to(torch.bfloat16).view(tiles, TILE).contiguous()


class _Avx2Linear(nn.Module):
    """Shared forward: rows to float32 through the kernel, back in the input's dtype, plus bias."""

    in_features: int
    out_features: int

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._matmul(x.reshape(-1, self.in_features))
        if out.shape[1] != self.out_features:
            out = out[:, :self.out_features]
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class Int4Avx2Linear(_Avx2Linear):
    """`Int4Linear`'s weights in the AVX2 kernel's layout (inference only)."""

    def __init__(self, layer: Int4Linear) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = layer.in_features, layer.out_features, layer.group_size
        q = int4_integers(layer.packed_weight, layer.in_features)
        qweight, scales = pack_int4(q, layer.scales_and_zeros, layer.group_size)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", layer.bias)

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] >= DENSE_FROM_ROWS:  # a prefill: unpack once, dense matmul
            return flat.to(torch.float32) @ unpack_int4_avx2(self.qweight, self.scales).T
        return torch.ops.aigc.int4_linear(flat, self.qweight, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}, avx2"


class Int8Avx2Linear(_Avx2Linear):
    """`Int8Linear`'s weights in the AVX2 kernel's layout (inference only)."""

    def __init__(self, layer: Int8Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        qweight, scales = pack_int8(layer.weight_int8, layer.scales)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", layer.bias)

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aigc.int8_linear(flat, self.qweight, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8, avx2"


class TiledInt8Embedding(nn.Module):
    """An 8-bit embedding reading its rows from an `Int8Avx2Linear` head's tiles (the tied head and
    embedding keep sharing one copy of the int8 rows)."""

    def __init__(self, head: Int8Avx2Linear, embedding: Int8Embedding) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.register_buffer("qweight", head.qweight)
        self.register_buffer("scales", head.scales)
        self.out_dtype, self.padding_idx = embedding.out_dtype, embedding.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tile, column = ids // TILE, ids % TILE
        rows = self.qweight[tile, :, column].to(self.out_dtype)  # (*ids.shape, K)
        return rows * self.scales[tile, column].to(self.out_dtype).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8, avx2 tiles"


def use_avx2_kernels(model: nn.Module) -> dict[str, int]:
    """Replace the int4 model's `Int4Linear` and `Int8Linear` layers (without hooks) by their AVX2
    versions, and an `Int8Embedding` sharing the head's rows by a `TiledInt8Embedding`. Returns how
    many of each were replaced. Needs the native library loaded (`kernels()`)."""
    if kernels() is None:
        raise RuntimeError("the native kernels are not loaded")
    counts = {"int4": 0, "int8": 0, "embedding": 0}
    converted: dict[int, Int8Avx2Linear] = {}  # id(old int8 rows) → the new head
    replacements: list[tuple[Any, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if has_hooks(child):
                continue
            if type(child) is Int4Linear and child.group_size == GROUP_SIZE and dense_unpacking_works() \
                    and child.out_features % packing_block() == 0:
                replacements.append((parent, name, Int4Avx2Linear(child)))
                counts["int4"] += 1
            elif type(child) is Int8Linear:
                new = Int8Avx2Linear(child)
                converted[id(child.weight_int8)] = new
                replacements.append((parent, name, new))
                counts["int8"] += 1
    for parent, name, new in replacements:
        setattr(parent, name, new)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Int8Embedding and not has_hooks(child) and id(child.weight_int8) in converted:
                setattr(parent, name, TiledInt8Embedding(converted[id(child.weight_int8)], child))
                counts["embedding"] += 1
    return counts


def use_avx2_kernels_where_they_pay(model: nn.Module, build_root: str | Path) -> dict[str, int]:
    """`use_avx2_kernels` on an AVX2 CPU without AVX-512, the native library built under `build_root` the
    first time; elsewhere (or when it does not build) nothing, and PyTorch's kernels keep running."""
    if torch.backends.cpu.get_cpu_capability() != "AVX2":
        return {}
    from .native import load_native_layers

    op, reason = load_native_layers(build_root)
    if op is None or not avx2_kernels_pay():
        log.warning("int4 layers stay on PyTorch's kernel: %s", reason or "this CPU does not run the AVX2 kernels")
        return {}
    return use_avx2_kernels(model)
