"""Decode speed of the default model on the compute lane alone, and once other threads run torch too.

    .venv/bin/python benchmarks/bench_threads.py [--quantization none|int4] [--batch 1]

Why the studio runs all tensor work on one thread (`generators/compute.py`): torch's CPU operators
run on an OpenMP (libgomp) team per calling thread, kept until that thread exits. Once a second
thread has run parallel regions the process holds more OpenMP threads than CPUs, libgomp throttles
its spin-wait, and each of the hundreds of tiny parallel regions of a decode step pays a futex
wake-up. This script shows it on bare `model(...)` decode steps on a KV cache (no plugin code): first
on the lane while it is the only thread doing torch work, then after the main thread has run torch
as well (what a server's request threads did before the lane), then from a third thread.
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

from generators.compute import lane  # noqa: E402
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
    # 1. the studio's way: only the compute lane runs tensor work (the load ran in a thread that has exited)
    rows: list[tuple[str, float]] = [("compute lane, the only thread with an OpenMP team", lane().call(decode_rate))]
    # 2. what a server did before the lane: request threads run torch too, and every such thread keeps a team
    rows.append(("main thread as well (now two teams)", decode_rate()))
    rows.append(("compute lane again (two teams)", lane().call(decode_rate)))

    def in_worker(n: int) -> None:
        torch.set_num_threads(n)
        rows.append((f"a third thread, {n} torch thread(s)", decode_rate()))

    for n in sorted({threads, 1}, reverse=True):
        worker = threading.Thread(target=in_worker, args=(n,))
        worker.start()
        worker.join()
    print(f"SmolLM2-135M-Instruct, quantization {args.quantization}, batch {b}, {threads} torch thread(s), "
          f"torch {torch.__version__}\n")
    print("| where | tok/s | vs the lane alone |\n|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
