"""Kernel choices measured on the model's own weights at load.

Which matmul kernel is fastest for a given number of rows is a fact of the CPU and its BLAS
(MKL's small-batch sgemm, oneDNN's bfloat16 reorders, `torch.mv` for one row), not of the model, so
it is measured once per loaded model rather than hard-coded. A leaf module: it imports only torch,
so the kernels, the step and the loaders can all use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PAD_ROWS = 16
MEASURE_MIN_ELEMENTS = 1 << 20  # smaller matrices: not worth a kernel choice, and their timings are noise


def worth_measuring(weight: Any) -> bool:
    """A CPU matrix big enough that a kernel choice matters and its timing is not noise."""
    return weight.numel() >= MEASURE_MIN_ELEMENTS and weight.device.type == "cpu"


def best_seconds(call: Callable[[], Any], repeats: int = 3) -> float:
    """Best of `repeats` timings of `call()` after one untimed call."""
    import time

    import torch

    best = float("inf")
    with torch.inference_mode():
        call()
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
    return best


def matrix_vector_is_faster(weight: Any, margin: float = 0.9) -> bool:
    """Whether one row goes faster through `torch.mv` (matrix × vector) than through a one-row matmul.
    oneDNN's bfloat16 one-row matmul is slower than `mv` on some CPUs; float32 usually ties (both MKL)."""
    import torch

    if not worth_measuring(weight):
        return False
    row = torch.randn((1, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    linear, mv = torch.nn.functional.linear, torch.mv
    return best_seconds(lambda: mv(weight, row[0])) < margin * best_seconds(lambda: linear(row, weight))


def calibrate_row_padding(weight: Any, margin: float = 0.9) -> dict[int, int]:
    """{rows: PAD_ROWS} for the batch sizes whose float matmul with `weight` is faster when padded to
    16 rows. MKL's sgemm on AVX-512 runs fewer than 16 rows through a kernel that costs about one more
    pass over the weights per few rows, and 16 or more through a blocked GEMM; other CPUs and BLAS
    libraries switch elsewhere or not at all, hence a measurement (best of three, a few ms at load).
    Small matrices are not worth it and their timings are noise: no padding."""
    import torch

    if not worth_measuring(weight):
        return {}
    rows = torch.randn((PAD_ROWS, weight.shape[1]), generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    linear = torch.nn.functional.linear
    padded = best_seconds(lambda: linear(rows, weight))
    return {m: PAD_ROWS for m in range(2, PAD_ROWS) if padded < margin * best_seconds(lambda m=m: linear(rows[:m], weight))}
