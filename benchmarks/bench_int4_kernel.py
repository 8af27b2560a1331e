"""The int4 and int8 kernels against float32 on SmolLM2-sized layers, side by side, on this CPU.

    .venv/bin/python benchmarks/bench_int4_kernel.py [--threads 1] [--repeats 200]

Prints, for 1, 8, 16 and 128 rows (one decoding step, small batches, a prefill), the milliseconds of
`nn.Linear` in float32, of PyTorch's kernel (`Int4Linear`: 4-bit groups of 32, bfloat16 activations;
`Int8Linear` for the 8-bit output head) and of the project's AVX2 kernels (`Int4Avx2Linear`,
`Int8Avx2Linear`: the same weights, float32 activations; built into data/models/_native the first time;
skipped where the CPU lacks AVX2), alternated round by round. One layer's weights stay in the CPU's cache
between calls, so this times the kernels' arithmetic alone; a whole model's decoding step also reads every
weight from memory once (bench_precision, bench_api).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from generators.text.engine import avx2  # noqa: E402
from generators.text.engine.int4 import Int4Linear, Int8Linear, int4_supported  # noqa: E402
from generators.text.engine.native import load_native_layers  # noqa: E402


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
    op, reason = load_native_layers(ROOT / "data" / "models" / "_native")
    ours = op is not None and avx2.kernels() is not None and bool(avx2.kernels().quant_kernels_supported())
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; threads: {args.threads}; "
          f"AVX2 kernels: {'yes' if ours else 'no (' + (reason or 'this CPU lacks AVX2') + ')'}")
    print("| layer | rows | float32 ms | PyTorch q ms | AVX2 q ms | PyTorch / float32 | AVX2 / float32 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    torch.manual_seed(0)
    layers = [("MLP up 576→1536, int4", 576, 1536), ("MLP down 1536→576, int4", 1536, 576),
              ("head 576→49152, int8", 576, 49152)]
    with torch.no_grad():
        for label, k, n in layers:
            dense = torch.nn.Linear(k, n, bias=False)
            if n == 49152:
                pytorch = Int8Linear(dense)
                mine = avx2.Int8Avx2Linear(pytorch) if ours else None
            else:
                pytorch = Int4Linear(dense)
                mine = avx2.Int4Avx2Linear(pytorch) if ours else None
            calls = max(5, args.repeats * 1536 // n)
            for rows in (1, 8, 16, 128):
                x = torch.randn(rows, k)
                times: list[list[float]] = [[], [], []]
                for _ in range(5):  # alternated, so a drift in the machine's speed hits all
                    for i, layer in enumerate((dense, pytorch, mine)):
                        if layer is not None:
                            times[i].append(per_call_ms(layer, x, calls))
                f32, theirs = statistics.median(times[0]), statistics.median(times[1])
                own = statistics.median(times[2]) if times[2] else float("nan")
                print(f"| {label} | {rows} | {f32:.3f} | {theirs:.3f} | {own:.3f} | {theirs / f32:.2f}x | {own / f32:.2f}x |")


if __name__ == "__main__":
    main()
