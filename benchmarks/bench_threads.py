"""Decode speed of the default model in the main thread against a worker thread, side by side.

    .venv/bin/python benchmarks/bench_threads.py [--quantization none|int4] [--batch 1]

The studio decodes in worker threads (the continuous batcher's scheduler thread, or the server's
request threads when batching is off), so this is the speed users get. On this project's 2-core VM a
worker thread decodes 1.3-2x slower than the main thread with the same torch thread count (and the
second intra-op thread barely helps there); OMP_WAIT_POLICY and glibc malloc arenas do not change it.
This script reproduces it: bare `model(...)` decode steps on a KV cache, no plugin code involved.
Cause: the main thread ran parallel regions first, so two threads own OpenMP teams, the process has
more OpenMP threads than CPUs, and libgomp throttles its spin-wait between the many tiny regions of a
decode step. A worker that is the only thread doing torch work is as fast as the main thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generators.text.transformers_lm import TransformersLM  # noqa: E402
from webui.settings import default_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantization", default="none", choices=["none", "int4", "dynamic-int8"])
    parser.add_argument("--batch", type=int, default=1, help="rows decoded together")
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    import torch

    source = default_models()[0].options["source"]
    lm = TransformersLM("m", {"source": source, "device": "cpu", "max_batch": 1, "quantization": args.quantization},
                        cache_dir=str(ROOT / ".cache" / "models"))
    lm.load()
    model, b = lm.model, args.batch
    prompt = torch.randint(0, 1000, (b, 40))

    def decode_rate() -> float:
        with torch.inference_mode():
            cache = model(input_ids=prompt, use_cache=True).past_key_values
            start = time.perf_counter()
            for i in range(args.steps):
                out = model(input_ids=torch.full((b, 1), 5), past_key_values=cache, use_cache=True,
                            position_ids=torch.full((b, 1), 40 + i))
                cache = out.past_key_values
            return b * args.steps / (time.perf_counter() - start)

    threads = torch.get_num_threads()
    rows: list[tuple[str, float]] = [("main thread", decode_rate())]

    def in_worker(n: int) -> None:
        torch.set_num_threads(n)
        rows.append((f"worker thread, {n} torch thread(s)", decode_rate()))

    for n in sorted({threads, 1}, reverse=True):
        worker = threading.Thread(target=in_worker, args=(n,))
        worker.start()
        worker.join()
    rows.append(("main thread again", decode_rate()))
    print(f"SmolLM2-135M-Instruct, quantization {args.quantization}, batch {b}, {threads} torch thread(s), "
          f"torch {torch.__version__}\n")
    print("| where | tok/s | vs main thread |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
