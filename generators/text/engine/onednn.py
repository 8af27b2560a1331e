"""bfloat16 Linear layers with their weights reordered once into oneDNN's blocked layout.

`F.linear` on a plain (N, K) bfloat16 weight makes oneDNN reorder the weight into its blocked
(AMX / AVX-512 BF16) layout on every call, and a decoding step calls a hundred of them. Reordered
once at load (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's weight freezing does) the
same matmul runs without that reorder, with the same results at decoding sizes (1–16 rows: equal to
`F.linear` bit for bit, tested; for some long prefills oneDNN blocks the sums differently and the
last bits differ). The packed weight replaces the plain one (no second copy); it is an opaque oneDNN
tensor, so these layers are for inference on the CPU only. Whether packing pays is measured on the
model's own weights at load (`pack_linear_layers_if_faster`). Figures: bench_batching.py, README.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hooks import has_hooks
from .measure import MEASURE_MIN_ELEMENTS, best_seconds

PACK_FOR_ROWS = 16  # oneDNN picks the blocking for this many rows; any number of rows works


def onednn_bfloat16_available() -> bool:
    """oneDNN bfloat16 kernels exist in this build AND this CPU has the instructions they need
    (AVX-512 BW/VL/DQ or AVX-NE-CONVERT); on an AVX2-only CPU the weight reorder raises."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


class PackedLinear(nn.Module):
    """Drop-in for a bfloat16 `nn.Linear` (inference, CPU) whose weight is stored reordered for oneDNN."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, PACK_FOR_ROWS))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, oneDNN"


def packing_is_faster(weight: torch.Tensor, margin: float = 0.9) -> bool:
    """Whether 16 rows through the packed weight beat `F.linear` by `margin` (and one row is no slower
    than the faster of `F.linear` and `torch.mv`). Measured on the layer at load, as the lean step's
    kernel choices are; matrices under a million elements are not worth it (and time as noise)."""
    if weight.dtype != torch.bfloat16 or weight.device.type != "cpu" or weight.numel() < MEASURE_MIN_ELEMENTS \
            or not onednn_bfloat16_available():
        return False
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_FOR_ROWS)
    rows = torch.randn((PACK_FOR_ROWS, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    linear, pointwise = torch.nn.functional.linear, torch.ops.mkldnn._linear_pointwise
    batch = best_seconds(lambda: pointwise(rows, packed, None, "none", [], "")) < margin * best_seconds(
        lambda: linear(rows, weight))
    one = rows[:1]
    plain_one = min(best_seconds(lambda: linear(one, weight)), best_seconds(lambda: torch.mv(weight, one[0])))
    return batch and best_seconds(lambda: pointwise(one, packed, None, "none", [], "")) <= 1.05 * plain_one


def _packable(model: nn.Module) -> list[tuple[Any, str, nn.Linear]]:
    """(parent, name, layer) of every bfloat16 `nn.Linear` without hooks, except an output head that
    shares its weight with the input embedding (packing it would keep a second copy)."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = getattr(embedding, "weight", None)
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is nn.Linear and child.weight.dtype == torch.bfloat16 and child.weight is not shared
            and not has_hooks(child)]


def _pack(targets: list[tuple[Any, str, nn.Linear]]) -> int:
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)


def pack_linear_layers(model: nn.Module) -> int:
    """Replace every packable layer of `model` (`_packable`) by a `PackedLinear`. Returns how many."""
    return _pack(_packable(model))


PROBE_ELEMENTS = 4 << 20


def pack_linear_layers_if_faster(model: nn.Module) -> int:
    """`pack_linear_layers` when `packing_is_faster` on the model's own weights: the first layers of the
    commonest input width, stacked to a few million elements — a matrix the size a step multiplies
    (a small model's single layers time as noise). Returns how many layers were packed (0: none)."""
    targets = _packable(model)
    weights = [child.weight.detach() for _, _, child in targets]
    if not weights:
        return 0
    width = max({w.shape[1] for w in weights}, key=lambda k: sum(w.numel() for w in weights if w.shape[1] == k))
    probe, total = [], 0
    for w in (w for w in weights if w.shape[1] == width):
        if total >= PROBE_ELEMENTS:
            break
        probe.append(w)
        total += w.numel()
    return _pack(targets) if packing_is_faster(torch.cat(probe)) else 0
