"""Projections of the lean step: one or several Linear-like layers of the same input as one call.

Which call depends on the kind of layer the model holds after loading — a float `nn.Linear`, an
`Int4Linear` (int4.py), a `PackedLinear` (onednn.py) or anything else (dynamic int8, bitsandbytes,
hooked layers) — and `PROJECTIONS` is the strategy table keyed by that kind. Each strategy builds a
`Projection` subclass that knows its own kernel: how to call it for a batch and for one row, what
dtype its input must have, and what the C++ layer loop needs to call the same kernel
(`native_parts`; None for kinds the loop does not know).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .avx2 import Int4Avx2Linear
from .hooks import forward_of, has_hooks
from .int4 import Int4Linear
from .onednn import PackedLinear

INT4_ROW_BLOCK = 64  # the CPU int4 kernel lays out rows in blocks of 64: packed rows concatenate in whole blocks

# projection kinds of the C++ layer loop (csrc/lean_layers.cpp, KIND_*)
NATIVE_INT4, NATIVE_LINEAR, NATIVE_MV, NATIVE_ONEDNN, NATIVE_INT4_AVX2 = 0, 1, 2, 3, 4

# (kind, group size, [(a, b, bias)] parts whose outputs are concatenated): see csrc/lean_layers.cpp
NativeParts = tuple[int, int, list[tuple[Any, Any, Any]]]


class Projection:
    """A call on 2-D rows (B, in) → (B, out). `input_dtype` is what the rows must be given in; the output
    comes in whatever dtype the kernel produces — the next operator (an add to the float32 residual, the
    RoPE multiply) promotes it exactly, so no conversion of its own is spent. `fused`: several layers
    run as one matmul. `one_row` is the call for a batch of one row (a kernel may have a faster one)."""

    def __init__(self, call: Callable[[Any], Any], input_dtype: Any, fused: bool = False) -> None:
        self.call, self.input_dtype, self.fused = call, input_dtype, fused
        self.one_row = call

    @property
    def dense_weight(self) -> Any:
        """The plain float weight (N, K) this projection multiplies by, or None (packed or quantized)."""
        return None

    def use_matrix_vector(self) -> None:
        """One row through `torch.mv` where the kernel allows it (plain float weights only)."""

    def native_parts(self) -> NativeParts | None:
        """What the C++ layer loop needs to call the same kernel, or None: a kind it does not know."""
        return None


class LinearProjection(Projection):
    """One float matmul `F.linear(x, weight, bias)` (weights of several layers concatenated when fused)."""

    def __init__(self, weight: Any, bias: Any, fused: bool) -> None:
        linear = torch.nn.functional.linear
        super().__init__(lambda x: linear(x, weight, bias), weight.dtype, fused)
        self.weight, self.bias = weight, bias
        self.matrix_vector = False

    @property
    def dense_weight(self) -> Any:
        return self.weight

    def use_matrix_vector(self) -> None:
        weight, bias, mv = self.weight, self.bias, torch.mv
        self.matrix_vector = True
        if bias is None:
            self.one_row = lambda x: mv(weight, x[0]).unsqueeze(0)
        else:
            self.one_row = lambda x: (mv(weight, x[0]) + bias).unsqueeze(0)

    def native_parts(self) -> NativeParts:
        return (NATIVE_MV if self.matrix_vector else NATIVE_LINEAR, 0, [(self.weight, None, self.bias)])


class Int4Projection(Projection):
    """PyTorch's CPU int4 kernel on packed rows, without the module's conversions around it."""

    def __init__(self, packed: Any, scales_and_zeros: Any, group: int, bias: Any, dtype: Any, fused: bool) -> None:
        kernel = torch._weight_int4pack_mm_for_cpu
        if bias is None:
            call = lambda x: kernel(x, packed, group, scales_and_zeros)  # noqa: E731
        else:
            bias = bias.to(dtype)  # the module adds its bias after converting back to the model's dtype
            call = lambda x: kernel(x, packed, group, scales_and_zeros).to(dtype) + bias  # noqa: E731
        super().__init__(call, torch.bfloat16, fused)
        self.packed, self.scales_and_zeros, self.group, self.bias = packed, scales_and_zeros, group, bias

    def native_parts(self) -> NativeParts:
        return (NATIVE_INT4, self.group, [(self.packed, self.scales_and_zeros, self.bias)])


class Int4Avx2Projection(Projection):
    """The project's AVX2 int4 kernel (avx2.py) on float32 rows; its output comes back in `dtype`."""

    def __init__(self, qweight: Any, scales: Any, bias: Any, dtype: Any, fused: bool) -> None:
        kernel = torch.ops.aigc.int4_linear
        if dtype == torch.float32:
            call = (lambda x: kernel(x, qweight, scales)) if bias is None else (  # noqa: E731
                lambda x: kernel(x, qweight, scales) + bias)
        else:
            bias = None if bias is None else bias.to(dtype)
            call = (lambda x: kernel(x, qweight, scales).to(dtype)) if bias is None else (  # noqa: E731
                lambda x: kernel(x, qweight, scales).to(dtype) + bias)
        super().__init__(call, torch.float32, fused)
        self.qweight, self.scales, self.bias = qweight, scales, bias

    def native_parts(self) -> NativeParts:
        return (NATIVE_INT4_AVX2, 0, [(self.qweight, self.scales, self.bias)])


class OneDNNProjection(Projection):
    """oneDNN-packed bfloat16 weights (onednn.py): packed weights do not concatenate, so several layers
    (q/k/v, gate/up) are one kernel call each, outputs joined."""

    def __init__(self, parts: list[tuple[Any, Any]]) -> None:
        pointwise, cat = torch.ops.mkldnn._linear_pointwise, torch.cat
        if len(parts) == 1:
            (weight, bias), = parts
            call = lambda x: pointwise(x, weight, bias, "none", [], "")  # noqa: E731
        else:
            call = lambda x: cat([pointwise(x, w, b, "none", [], "") for w, b in parts], dim=-1)  # noqa: E731
        super().__init__(call, torch.bfloat16)
        self.parts = parts

    def native_parts(self) -> NativeParts:
        return (NATIVE_ONEDNN, 0, [(weight, None, bias) for weight, bias in self.parts])


class ModuleProjection(Projection):
    """The layers' own forwards one by one, outputs joined: layer kinds the table does not know
    (dynamic int8, bitsandbytes), hooked layers, and layers that do not fuse."""

    def __init__(self, modules: list[Any], dtype: Any) -> None:
        calls = [forward_of(m) for m in modules]
        if len(calls) == 1:
            super().__init__(calls[0], dtype)
        else:
            super().__init__(lambda x: torch.cat([call(x) for call in calls], dim=-1), dtype)


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _joined_bias(modules: list[Any]) -> tuple[bool, Any]:
    """(whether the biases can be joined: all or none, the joined bias or None)."""
    biases = [m.bias for m in modules]
    if len({b is None for b in biases}) != 1:
        return False, None
    return True, None if biases[0] is None else torch.cat([b.detach() for b in biases])


def _linear(modules: list[Any], dtype: Any) -> Projection | None:
    """Float `nn.Linear` layers as one matmul; the modules' own weights become views of the fused
    tensor, so the model computes exactly what it did and holds no second copy."""
    if len(modules) == 1:  # one F.linear on its own weight: nothing copied
        return LinearProjection(modules[0].weight, modules[0].bias, fused=False)
    ok, bias = _joined_bias(modules)
    if not ok:
        return None
    weight = torch.cat([m.weight.detach() for m in modules])
    for m, start in zip(modules, _offsets([m.out_features for m in modules]), strict=True):
        m.weight = nn.Parameter(weight[start:start + m.out_features], requires_grad=False)
    return LinearProjection(weight, bias, fused=True)


def _int4(modules: list[Any], dtype: Any) -> Projection | None:
    """`Int4Linear` layers of one group size, each a whole number of 64-row blocks, as one kernel call
    (rows are packed independently, so packed rows concatenate); a single one calls the kernel without
    the module's conversions."""
    sizes = [m.out_features for m in modules]
    ok, bias = _joined_bias(modules)
    if not ok or len({m.group_size for m in modules}) != 1 or any(n % INT4_ROW_BLOCK for n in sizes):
        return None
    packed = torch.cat([m.packed_weight for m in modules])
    scales_and_zeros = torch.cat([m.scales_and_zeros for m in modules], dim=1)
    for m, start, size in zip(modules, _offsets(sizes), sizes, strict=True):
        m.packed_weight = packed[start:start + size]
    return Int4Projection(packed, scales_and_zeros, modules[0].group_size, bias, dtype, fused=len(modules) > 1)


def _int4_avx2(modules: list[Any], dtype: Any) -> Projection | None:
    """`Int4Avx2Linear` layers as one kernel call: their tiles of 8 outputs concatenate."""
    ok, bias = _joined_bias(modules)
    if not ok:
        return None
    qweight = torch.cat([m.qweight for m in modules])
    scales = torch.cat([m.scales for m in modules])
    for m, start, size in zip(modules, _offsets([m.qweight.shape[0] for m in modules]),
                              [m.qweight.shape[0] for m in modules], strict=True):
        m.qweight, m.scales = qweight[start:start + size], scales[start:start + size]
    return Int4Avx2Projection(qweight, scales, bias, dtype, fused=len(modules) > 1)


def _onednn(modules: list[Any], dtype: Any) -> Projection:
    return OneDNNProjection([(m.packed_weight, m.bias) for m in modules])


# layer kind → how several layers of that kind (same input) become one Projection (None: they cannot)
PROJECTIONS: dict[type, Callable[[list[Any], Any], Projection | None]] = {
    nn.Linear: _linear,
    Int4Linear: _int4,
    Int4Avx2Linear: _int4_avx2,
    PackedLinear: _onednn,
}


def _checked(built: Projection, modules: list[Any], dtype: Any) -> Projection:
    """`built` against the layers it replaces on a random input: a kernel that changed its layout
    would otherwise compute garbage silently."""
    first = modules[0]
    device = next(iter(first.buffers()), getattr(first, "weight", None)).device
    probe = torch.randn((2, first.in_features), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with torch.inference_mode():
        got = built.call(probe.to(built.input_dtype)).float()
        want = torch.cat([m(probe) for m in modules], dim=-1).float()
    # a layout mistake is off by the size of the values; another summation order is off in the last bits
    if (got - want).abs().max() > 1e-2 * want.abs().max():
        raise RuntimeError("fused projections differ from the layers they fuse")
    return built


def projection(modules: list[Any], dtype: Any) -> Projection:
    """One call computing `cat([m(x) for m in modules], -1)` for rows x in `dtype` (the model's): the
    strategy of the layers' kind when they are all of one kind without hooks, else their forwards."""
    kinds = {type(m) for m in modules}
    build = PROJECTIONS.get(next(iter(kinds))) if len(kinds) == 1 else None
    if build is not None and not any(has_hooks(m) for m in modules):
        built = build(modules, dtype)
        if built is not None:
            return _checked(built, modules, dtype)
    return ModuleProjection(modules, dtype)
