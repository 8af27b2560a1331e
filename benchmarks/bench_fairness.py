"""Five long streams from one user versus one short request from another, at one model slot.

    .venv/bin/python benchmarks/bench_fairness.py [--long 100] [--short 4] [--streams 5]

Runs the shipped character LSTM (lstm-fortunes, concurrency 1) through the same service the chat and
the API use. Ann starts `--streams` requests of `--long` characters; once they wait, Bob asks for
`--short`. Measured twice in one run, side by side: with the registry's fair share (round-robin
across owners) and with the owners ignored (first come, first served, as a plain semaphore does).
Prints Bob's wait and Ann's mean time in each mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_mode(ctx, model: str, fair: bool, streams: int, long: int, short: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from generators.base import SamplingParams, TextRequest
    from webui.services.generation import stream_text

    slots = ctx.registry._slot(model).semaphore
    acquire = slots.acquire
    if not fair:
        slots.acquire = lambda owner="", timeout=None: acquire("", timeout)  # every request is one queue: FIFO
    took: dict[str, list[float]] = {"ann": [], "bob": []}

    def one(owner: str, tokens: int) -> None:
        start = time.perf_counter()
        request = TextRequest(prompt="The ", params=SamplingParams(max_new_tokens=tokens, seed=1))
        for _ in stream_text(ctx, owner, model, request, source="api"):
            pass
        took[owner].append(time.perf_counter() - start)

    threads = [threading.Thread(target=one, args=("ann", long)) for _ in range(streams)]
    for t in threads:
        t.start()
    while sum(slots.waiting().values()) < streams - 1:
        time.sleep(0.001)
    bob = threading.Thread(target=one, args=("bob", short))
    bob.start()
    for t in [*threads, bob]:
        t.join()
    slots.acquire = acquire
    return {"bob": took["bob"][0], "ann": sum(took["ann"]) / len(took["ann"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=5)
    p.add_argument("--long", type=int, default=100)
    p.add_argument("--short", type=int, default=4)
    args = p.parse_args()
    from webui.server import create_context
    from webui.settings import ModelEntry, Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), requests_per_minute=0, models=[
            ModelEntry(name="lstm-fortunes", plugin="char-lstm", options={"weights": "builtin:lstm-fortunes"})])
        ctx = create_context(settings)
        ctx.registry.load("lstm-fortunes")
        run_mode(ctx, "lstm-fortunes", True, 1, 20, 4)  # warm up
        rows = [(mode, run_mode(ctx, "lstm-fortunes", fair, args.streams, args.long, args.short))
                for mode, fair in (("first come, first served", False), ("fair share (round-robin)", True))]
        ctx.store.close()
    print(f"{args.streams} streams x {args.long} chars (ann) vs 1 x {args.short} chars (bob), one model slot\n")
    print("| queueing | bob's request (s) | ann's mean stream (s) |\n|---|---:|---:|")
    for mode, r in rows:
        print(f"| {mode} | {r['bob']:.2f} | {r['ann']:.2f} |")


if __name__ == "__main__":
    main()
