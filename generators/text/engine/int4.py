"""Weight-only 4-bit Linear layers for CPU decoding, on PyTorch's own int4 matmul kernel.

Each group of 32 input weights of an output row is stored as 4-bit integers with a bfloat16 scale
and offset (asymmetric, like llama.cpp's Q4_1): w ≈ (q − 8) · scale + zero. A Q4_1 GGUF file's
weights, dequantized at load, fall back onto this grid (up to the bfloat16 rounding of each group's
float16 scale and offset), so this is the 4-bit model llama.cpp runs, not a second rounding of it.
The output head is the exception: see `quantize_int4`. Activations go through the kernel in bfloat16
(the fast path of `torch._weight_int4pack_mm_for_cpu`; its float32 path is a slow fallback) and come
back in the model's dtype.

A decode step reads about an eighth of the float32 weight bytes: on a memory-bound CPU that is what
makes it faster. A prefill (from `DENSE_FROM_ROWS` rows) unpacks each layer to bfloat16 and multiplies
densely instead: the kernel's cost grows with every few rows, unpacking costs the same for any number.
The input embedding is kept as 8-bit rows (`Int8Embedding`): a lookup reads one row per token, so
that is for memory. Figures: benchmarks/bench_precision.py and the README.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from .hooks import has_hooks

GROUP_SIZE = 32
# From this many rows (a prefill) a layer's weights are unpacked to bfloat16 once and multiplied on the
# dense kernel: the int4 kernel's cost grows with every few rows, unpacking costs the same for any number.
DENSE_FROM_ROWS = 160


def int4_supported() -> bool:
    """This PyTorch build has the CPU int4 kernels."""
    names = ("_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu", "_weight_int8pack_mm")
    return all(hasattr(torch, name) for name in names)


def bfloat16_is_native() -> bool:
    """This CPU computes in bfloat16 natively (AVX-512 BF16 or AMX). Without it every bfloat16 operator
    converts to float32 and back: attention over the cache and the norms then cost several times their
    float32 selves (bench_precision), so an int4 model keeps float32 activations there."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def activations_dtype(dtype: str) -> torch.dtype:
    """The dtype an int4 model computes in between its kernels for the `dtype` option: bfloat16 when asked
    for, float32 when asked for, and for `auto` bfloat16 only where the CPU computes it natively."""
    if dtype == "bfloat16" or (dtype == "auto" and bfloat16_is_native()):
        return torch.bfloat16
    return torch.float32


def quantize_weight(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float weight → (packed int4 weight, scales_and_zeros (K/group, N, 2) bfloat16)."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}")
    w = weight.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    # Scale and offset are stored in bfloat16: round them first, then pick the integers for the rounded grid.
    scale = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16).to(torch.float32)
    zero = (low + 8 * scale).to(torch.bfloat16).to(torch.float32)
    q = torch.round((w - zero) / scale + 8).clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    scales_and_zeros = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_and_zeros.to(torch.bfloat16)


def dequantize_weight(packed_q: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The float weight the kernel multiplies by, from unpacked integers (for tests and error checks)."""
    n, k = packed_q.shape
    sz = scales_and_zeros.to(torch.float32).transpose(0, 1)  # (N, K/group, 2)
    q = packed_q.to(torch.float32).reshape(n, k // group_size, group_size)
    return ((q - 8) * sz[..., :1] + sz[..., 1:]).reshape(n, k)


@functools.cache
def packing_block() -> int | None:
    """The rows per block of this PyTorch's CPU int4 packing: blocks of B rows, each stored K-major as
    B/2 bytes per input column, byte j holding row j (low nibble) and row j + B/2 (high nibble). The
    kernel picks B by the CPU (64 on AVX-512, 32 on AVX2): found by packing known integers. None: a
    layout this code does not read (a later release), and nothing unpacks (the kernel keeps working)."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (128, 64), generator=generator, dtype=torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    for block in (64, 32, 16):
        if torch.equal(int4_integers(packed, 64, block), q):
            return block
    return None


def int4_integers(packed: torch.Tensor, k: int, block: int | None = None) -> torch.Tensor:
    """The (N, K) 4-bit integers (0..15) of a packed layer (`packing_block` rows per block)."""
    block = block or packing_block()
    n = packed.shape[0]
    if block is None or n % block:
        raise ValueError(f"{n} rows are not whole blocks of this PyTorch's int4 packing ({block})")
    blocks = packed.view(n // block, k, block // 2)
    q = torch.stack([blocks & 15, blocks >> 4], dim=2)  # (N/B, K, 2, B/2): row (B/2) h + j of the block
    return q.permute(0, 2, 3, 1).reshape(n, k).to(torch.int32)


def unpack_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The transposed weights (K, N), in bfloat16, of a packed int4 layer (a prefill's dense matmul)."""
    k = packed.shape[1] * 2
    q = int4_integers(packed, k).t().reshape(k // group_size, group_size, -1).to(torch.bfloat16)
    scale = scales_and_zeros[..., 0].unsqueeze(1)  # (K/group, 1, N)
    offset = (scales_and_zeros[..., 1] - 8 * scales_and_zeros[..., 0]).unsqueeze(1)  # w = (q - 8) * scale + zero
    return torch.addcmul(offset, q, scale).reshape(k, -1)


@functools.cache
def dense_unpacking_works() -> bool:
    """`unpack_int4` reads this PyTorch's packing (a layout change in a later release turns the dense
    path off instead of computing garbage)."""
    if packing_block() is None:
        return False
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((128, 64), generator=generator)
    packed, scales_and_zeros = quantize_weight(weight)
    rows = torch.randn((3, 64), generator=generator).to(torch.bfloat16)
    with torch.inference_mode():
        want = torch._weight_int4pack_mm_for_cpu(rows, packed, GROUP_SIZE, scales_and_zeros).float()
        got = (rows @ unpack_int4(packed, scales_and_zeros)).float()
    return bool((got - want).abs().max() <= 0.02 * want.abs().max())


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float rows → (int8 rows, one bfloat16 scale per row): the 8-bit head and embedding."""
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
    return torch.round(w / scale.to(torch.float32)[:, None]).clamp(-127, 127).to(torch.int8), scale


class _WeightOnlyLinear(nn.Module):
    """Shared forward: activations to bfloat16 through the kernel, back in the input's dtype, plus bias."""

    in_features: int
    out_features: int

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _keep_bias(self, linear: nn.Linear) -> None:
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._matmul(x.reshape(-1, self.in_features).to(torch.bfloat16))
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class Int4Linear(_WeightOnlyLinear):
    """Drop-in for `nn.Linear` (inference only) with 4-bit group-quantized weights."""

    def __init__(self, linear: nn.Linear, group_size: int = GROUP_SIZE) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        packed, scales_and_zeros = quantize_weight(linear.weight, group_size)
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self._keep_bias(linear)

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] >= DENSE_FROM_ROWS and dense_unpacking_works() and self.out_features % packing_block() == 0:  # a prefill
            return flat @ unpack_int4(self.packed_weight, self.scales_and_zeros, self.group_size)
        return torch._weight_int4pack_mm_for_cpu(flat, self.packed_weight, self.group_size, self.scales_and_zeros)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}"


class Int8Linear(_WeightOnlyLinear):
    """Drop-in for `nn.Linear` (inference only) with int8 weights, one bfloat16 scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight_int8, scales = quantize_rows_int8(linear.weight)
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self._keep_bias(linear)

    def _matmul(self, flat: torch.Tensor) -> torch.Tensor:
        return torch._weight_int8pack_mm(flat, self.weight_int8, self.scales)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class Int8Embedding(nn.Module):
    """Drop-in for `nn.Embedding` (inference only): rows stored as int8 with one bfloat16 scale each, as
    `Int8Linear` stores its rows (llama.cpp's 4-bit files keep the token embedding at 8 bits too), and
    returned in `dtype`. A step reads one row per token, so this is about memory (a small model's float32
    embedding is most of its int4 size). When the output head was tied to the embedding, both
    share the head's int8 tensors."""

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                 padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.out_dtype, self.padding_idx = dtype, padding_idx

    @classmethod
    def of(cls, embedding: nn.Embedding) -> Int8Embedding:
        return cls(*quantize_rows_int8(embedding.weight), embedding.weight.dtype, embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(ids, self.weight_int8).to(self.out_dtype)
        return rows * self.scales[ids].to(self.out_dtype).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8"


def quantize_int4(model: nn.Module, group_size: int = GROUP_SIZE) -> dict[str, int]:
    """Replace every `nn.Linear` whose input width divides into groups by an `Int4Linear`, except the
    output head, which gets 8-bit weights (`Int8Linear`): the head's errors land directly on the
    next-token scores, and llama.cpp's 4-bit files keep it at 8 bits too (a 4-bit head costs
    perplexity that an 8-bit one does not: bench_precision.py).
    The input embedding becomes an `Int8Embedding`; a head tied to it is quantized once and both
    use the same int8 rows. Returns how many layers of each kind were replaced."""
    if not int4_supported():
        raise RuntimeError(f"PyTorch {torch.__version__} has no CPU int4 matmul kernel")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embedding is not None and head is not None and getattr(head, "weight", None) is getattr(embedding, "weight", 0)
    targets: list[tuple[Any, str, nn.Linear]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and (child is head or child.in_features % group_size == 0):
                targets.append((parent, name, child))
    counts = {"int4": 0, "int8": 0, "int8 embedding": 0}
    head_int8 = None
    for parent, name, child in targets:
        if child is head:
            head_int8 = Int8Linear(child)
            setattr(parent, name, head_int8)
            counts["int8"] += 1
        else:
            setattr(parent, name, Int4Linear(child, group_size))
            counts["int4"] += 1
    if type(embedding) is nn.Embedding and not has_hooks(embedding):
        if tied and head_int8 is not None:
            replacement = Int8Embedding(head_int8.weight_int8, head_int8.scales, embedding.weight.dtype, embedding.padding_idx)
        else:
            replacement = Int8Embedding.of(embedding)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if child is embedding:
                    setattr(parent, name, replacement)
        counts["int8 embedding"] += 1
    if counts["int8"] and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # head and embedding are separate modules now (sharing int8 rows if tied)
    return counts


def use_bfloat16_activations(model: nn.Module) -> None:
    """Everything of an int4 model that is not a packed weight — norms, biases, the embedding's output —
    in bfloat16, so activations stay bfloat16 from layer to layer: the int4 and int8 kernels take and
    return bfloat16, and in float32 every projection's input and output was converted. Rotary
    frequencies stay float32 (as transformers keeps them for bfloat16 models: positions × frequencies
    in bfloat16 would be off by whole radians at long positions)."""
    keep = {name: buffer for name, buffer in model.named_buffers() if name.endswith("inv_freq")}
    model.to(torch.bfloat16)
    for name, buffer in keep.items():
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, buffer)
    for module in model.modules():
        if isinstance(module, Int8Embedding):
            module.out_dtype = torch.bfloat16
