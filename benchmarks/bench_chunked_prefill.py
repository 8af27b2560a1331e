"""A long prompt arriving while other streams decode: chunked prefill against one prefill forward.

    .venv/bin/python benchmarks/bench_chunked_prefill.py [--quantization int4|none] [--streams 4] [--rounds 2]

Side by side in one run, alternating: N chat streams decode greedily; half a second later a request
with a ~2,000-token prompt (the first 9,000 characters of Debian's GPL-3, or the project's held-out
text when the machine has no GPL file) arrives. Printed per setting: the longest pause between two
tokens of the running streams and the long request's time to first token, medians over the rounds.
"Chunked" is the batcher's default (chunks resized to take ~0.25 s); "one forward" sets the chunk
larger than any prompt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_batching import request  # noqa: E402
from generators.base import ChatMessage, SamplingParams, TextRequest  # noqa: E402
from generators.text.transformers_lm import TransformersLM  # noqa: E402
from webui.settings import default_models  # noqa: E402

GPL = Path("/usr/share/common-licenses/GPL-3")


def long_request(take: int) -> TextRequest:
    source = GPL if GPL.is_file() else ROOT / "webui" / "evaluation" / "heldout.txt"
    text = source.read_text(encoding="utf-8")[:9000]
    return TextRequest(messages=(ChatMessage("user", f"({take}) Summarise this: {text}"),),
                       params=SamplingParams(temperature=0.0, max_new_tokens=8))


def scenario(lm: TransformersLM, streams: int, take: int) -> tuple[float, float]:
    """(longest pause of the running streams, the long request's time to first token), seconds."""
    stamps: dict[int, list[float]] = {i: [] for i in range(streams)}

    def run(i: int) -> None:
        for _ in lm.stream(request(i, 120, 1000 + take)):
            stamps[i].append(time.perf_counter())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    start, first = time.perf_counter(), None
    for _ in lm.stream(long_request(take)):
        first = first if first is not None else time.perf_counter() - start
    for t in threads:
        t.join()
    pauses = [b - a for s in stamps.values() for a, b in zip(s, s[1:], strict=False)]
    return max(pauses), first or 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quantization", default="int4", choices=["none", "int4"])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    source = default_models()[0].options["source"]
    lm = TransformersLM("m", {"source": source, "device": "cpu", "quantization": args.quantization},
                        cache_dir=str(ROOT / ".cache" / "models"))
    lm.load()
    batcher = lm.decoder.batcher
    chunk, chunk_s = batcher.prefill_chunk, batcher.prefill_chunk_s
    results: dict[str, list[tuple[float, float]]] = {"one forward": [], "chunked": []}
    take = 0
    for _ in range(args.rounds):
        for name in results:
            if name == "one forward":
                batcher.prefill_chunk, batcher.prefill_chunk_s = 10**9, None
            else:
                batcher.prefill_chunk, batcher.prefill_chunk_s = chunk, chunk_s
            take += 1
            results[name].append(scenario(lm, args.streams, take))
            if name == "chunked":
                chunk = batcher.prefill_chunk  # as resized, for the next round
    tokens = len(lm.encode(long_request(0))[0])
    print(f"SmolLM2-135M-Instruct, quantization {args.quantization}, {args.streams} streams decoding, a {tokens:,}-token "
          f"prompt arriving; median of {args.rounds} alternating rounds (chunk now {batcher.prefill_chunk} tokens)\n")
    print("| prefill | longest pause of the running streams | long prompt's first token |\n|---|---:|---:|")
    for name, runs in results.items():
        pause = statistics.median(r[0] for r in runs)
        ttft = statistics.median(r[1] for r in runs)
        print(f"| {name} | {pause * 1000:.0f} ms | {ttft * 1000:.0f} ms |")
    lm.unload()


if __name__ == "__main__":
    main()
