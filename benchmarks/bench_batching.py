"""Continuous batching on the default model: aggregate tokens/s with 1, 2, 4, 8, 16 concurrent streams.

    .venv/bin/python benchmarks/bench_batching.py [--tokens 64] [--streams 1 2 4 8 16] [--dtype auto]
        [--quantization none|int4|dynamic-int8] [--repeats 3]

Side by side in one run: plain `model.generate` (one request), the plugin with batching off
(max_batch=1, requests one after another), and the plugin with batching on (max_batch=16) fed N
concurrent requests from N threads. Prints aggregate tokens/s, the ratio to one stream, and the
median time to first token under that load. Every stream count runs once per round, round after
round (`--repeats`), and the medians are printed: this VM's speed drifts by ±30 % over minutes, and
a ratio of two rates measured minutes apart would measure the drift.
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

from generators.base import ChatMessage, SamplingParams, TextRequest  # noqa: E402
from generators.compute import lane  # noqa: E402
from generators.text.transformers_lm import TransformersLM  # noqa: E402
from webui.settings import default_models  # noqa: E402

# 16 different questions: streams share only the chat template's system prompt (as real users do),
# never a whole prompt, so the prefix cache gets no help a real load would not give it.
PROMPTS = ["Tell me about the sea.", "Write a short poem about tea.", "Explain how a lighthouse works.",
           "List three facts about owls.", "Describe a quiet morning in a harbour town.", "What is a prime number?",
           "Give me a recipe for pancakes.", "Why is the sky blue?", "How do bees make honey?",
           "Suggest a name for a grey cat.", "What causes the seasons?", "Explain photosynthesis simply.",
           "Write a haiku about snow.", "How does a bicycle stay upright?", "What is the capital of Peru?",
           "Tell a short story about a lost key."]


def request(i: int, tokens: int, take: int = 0) -> TextRequest:
    # min_p 0 / temperature 0: greedy, and no EOS cut-off games: every stream asks for `tokens`.
    # Each run words its prompts apart ("take"), so the prefix cache never serves a whole prompt of an earlier run.
    prompt = PROMPTS[i % len(PROMPTS)] if take == 0 else f"(Take {take}.) {PROMPTS[i % len(PROMPTS)]}"
    return TextRequest(messages=(ChatMessage("user", prompt),),
                       params=SamplingParams(temperature=0.0, max_new_tokens=tokens))


def run_streams(lm: TransformersLM, n: int, tokens: int, take: int = 0) -> tuple[float, int, float]:
    """(seconds, tokens produced, median time to first token) for n concurrent streams."""
    produced = [0] * n
    ttft: list[float] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        start = time.perf_counter()
        first = None
        for chunk in lm.stream(request(i, tokens, take)):
            if chunk.text and first is None:
                first = time.perf_counter() - start
            if chunk.stats:
                produced[i] = chunk.stats.completion_tokens
        with lock:
            ttft.append(first or 0.0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, sum(produced), statistics.median(ttft)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="auto: float32, or bfloat16 activations with --quantization int4")
    parser.add_argument("--quantization", default="none", choices=["none", "int4", "dynamic-int8"])
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians are printed")
    args = parser.parse_args()
    import torch

    source = default_models()[0].options["source"]
    cache = str(ROOT / ".cache" / "models")
    options = {"source": source, "device": "cpu", "dtype": args.dtype, "quantization": args.quantization}
    batched = TransformersLM("b", {**options, "max_batch": 16}, cache_dir=cache)
    batched.load()
    single = TransformersLM("s", {**options, "max_batch": 1}, cache_dir=cache)
    single.load()
    # plain generate, one request; on the compute lane like all tensor work of the process (generators/compute.py)
    ids, _ = single.encode(request(0, args.tokens))

    def plain_generate() -> float:
        inputs = torch.tensor([ids])
        single.model.generate(inputs, max_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = single.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=args.tokens,
                                    min_new_tokens=args.tokens, do_sample=False)
        return (out.shape[1] - inputs.shape[1]) / (time.perf_counter() - start)

    plain = lane().call(plain_generate)
    run_streams(single, 1, 8, take=1)  # warm-up
    s_time, s_tokens, s_ttft = run_streams(single, 1, args.tokens, take=2)
    run_streams(batched, 1, 8, take=3)
    takes = iter(range(4, 10_000))
    runs: dict[int, list[tuple[float, int, float]]] = {n: [] for n in args.streams}
    for _ in range(args.repeats):
        for n in args.streams:
            runs[n].append(run_streams(batched, n, args.tokens, next(takes)))
    rows = []
    base = None
    for n in args.streams:
        seconds = statistics.median(r[0] for r in runs[n])
        produced = round(statistics.median(r[1] for r in runs[n]))
        rate = statistics.median(r[1] / r[0] for r in runs[n])
        base = base or rate
        rows.append((n, produced, seconds, rate, rate / base, statistics.median(r[2] for r in runs[n])))
    print(f"SmolLM2-135M-Instruct, {args.dtype}, quantization {args.quantization}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), "
          f"{args.tokens} new tokens per stream, greedy, median of {args.repeats} interleaved rounds\n")
    print(f"plain model.generate: {plain:.1f} tok/s; plugin, batching off: {s_tokens / s_time:.1f} tok/s "
          f"({s_tokens / s_time / plain:.2f}x plain)\n")
    print("| concurrent streams | tokens | seconds | aggregate tok/s | vs 1 stream | median time to first token |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, produced, seconds, rate, ratio, ttft in rows:
        print(f"| {n} | {produced} | {seconds:.1f} | {rate:.1f} | {ratio:.2f}x | {ttft * 1000:.0f} ms |")
    batched.unload()
    single.unload()


if __name__ == "__main__":
    main()
