"""One decoding step of the default model at 1, 8 and 16 rows, int4 on each kernel path, side by side.

    .venv/bin/python benchmarks/bench_step.py [--width 200] [--steps 15] [--rounds 3]

Loads SmolLM2 three times, int4 each time: PyTorch's int4 kernel with bfloat16 activations (what `auto` ran
on every CPU before the AVX2 kernels), PyTorch's kernel with float32 activations, and what `auto` runs now
(on an AVX2 CPU: the project's AVX2 kernels, float32 activations and the AVX2 attention; elsewhere the
same as the first row). Then times the lean step (C++ layer loop) on the compute lane: `rows` rows, each
with `--width` cached tokens (random keys and values: the arithmetic is what is timed), medians over
`--rounds` rounds that run every configuration and row count once in turn. Prints ms a step, tokens/s
and the rows' tokens/s over one row's — the ceiling of what batching can give through the HTTP API
(bench_api.py measures that).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from generators.compute import lane  # noqa: E402
from generators.text.engine import avx2  # noqa: E402
from generators.text.engine.kv_cache import KVCache  # noqa: E402
from generators.text.transformers_lm import TransformersLM  # noqa: E402
from webui.settings import default_models  # noqa: E402

ROWS = (1, 8, 16)


def load(name: str, cache: str, pytorch_kernels: bool, **options: object) -> TransformersLM:
    source = default_models()[0].options["source"]
    lm = TransformersLM(name, {"source": source, "device": "cpu", "quantization": "int4", "max_batch": 16, **options},
                        cache_dir=cache)
    pays = avx2.avx2_kernels_pay
    if pytorch_kernels:  # what ran before: the loader leaves the layers on PyTorch's kernel
        avx2.avx2_kernels_pay = lambda: False
    try:
        lm.load()
    finally:
        avx2.avx2_kernels_pay = pays
    return lm


def step_ms(lm: TransformersLM, rows: int, width: int, steps: int) -> float:
    step = lm.decoder.batcher.lean
    layers = lm.model.config.num_hidden_layers
    shape = (rows, step.kv_heads, width, step.head_dim)
    cache = KVCache([(torch.randn(shape, dtype=step.dtype), torch.randn(shape, dtype=step.dtype))
                     for _ in range(layers)], capacity=width + steps + 8)
    ids, positions = torch.randint(0, 1000, (rows, 1)), torch.full((rows, 1), width)
    with torch.inference_mode():
        for i in range(steps + 3):
            if i == 3:
                start = time.perf_counter()
            step(ids, positions, torch.ones(rows, cache.width + 1, dtype=torch.long), cache)
            positions = positions + 1
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=200, help="cached tokens per row")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cache = str(ROOT / ".cache" / "models")
    configs = {"PyTorch int4 kernel, bfloat16 activations (before)": load("a", cache, True, dtype="bfloat16"),
               "PyTorch int4 kernel, float32 activations": load("b", cache, True, dtype="float32"),
               "auto (now)": load("c", cache, False)}
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {lane().call(torch.get_num_threads)} threads; "
          f"{args.width} cached tokens a row")
    for label, lm in configs.items():
        print(f"- {label}: {lm.precision()}; attention: "
              f"{'AVX2 kernel' if lm.decoder.batcher.lean.attention is not None else 'scaled_dot_product_attention'}")

    def run() -> dict[tuple[str, int], list[float]]:
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for rows in ROWS:
                for label, lm in configs.items():
                    times.setdefault((label, rows), []).append(step_ms(lm, rows, args.width, args.steps))
        return times

    times = lane().call(run)
    print("\n| configuration | " + " | ".join(f"{r} rows ms (tok/s, vs 1)" for r in ROWS) + " |")
    print("|---|" + "---:|" * len(ROWS))
    for label in configs:
        one = statistics.median(times[(label, 1)])
        cells = []
        for rows in ROWS:
            ms = statistics.median(times[(label, rows)])
            cells.append(f"{ms:.1f} ({rows * 1e3 / ms:.0f}, {one * rows / ms:.2f}×)")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
