"""PyTorch's CPU int4 kernel against float32 on one SmolLM2-sized layer, side by side, on this CPU.

    .venv/bin/python benchmarks/bench_int4_kernel.py [--threads 1] [--repeats 200]

Prints, for 1, 8, 16 and 128 rows (one decoding step, small batches, a prefill), the milliseconds of
`Int4Linear` (4-bit groups of 32, bfloat16 activations: what `quantization=int4` runs) and of `nn.Linear`
in float32, alternated round by round. One layer's weights stay in the CPU's cache between calls, so this
times the kernels' arithmetic alone: on an AVX2-only CPU int4 loses here, yet it wins a whole model's
decoding step, which reads every weight from memory once (bench_precision, bench_api).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from generators.text.engine.int4 import Int4Linear, int4_supported  # noqa: E402


def per_call_ms(layer: torch.nn.Module, x: torch.Tensor, calls: int) -> float:
    layer(x)
    start = time.perf_counter()
    for _ in range(calls):
        layer(x)
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200, help="calls per timing; 5 timings per row count")
    args = parser.parse_args()
    if not int4_supported():
        print("This PyTorch build has no CPU int4 kernel.")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = torch.nn.Linear(576, 1536, bias=False)  # SmolLM2-135M's MLP up projection
    packed = Int4Linear(dense)
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; threads: {args.threads}")
    print("| rows | float32 ms | int4 ms | int4 / float32 |")
    print("|---:|---:|---:|---:|")
    with torch.no_grad():
        for rows in (1, 8, 16, 128):
            x = torch.randn(rows, 576)
            f32, i4 = [], []
            for _ in range(5):  # alternated, so a drift in the machine's speed hits both
                f32.append(per_call_ms(dense, x, args.repeats))
                i4.append(per_call_ms(packed, x, args.repeats))
            a, b = statistics.median(f32), statistics.median(i4)
            print(f"| {rows} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
