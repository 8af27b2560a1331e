"""Chat speed on this machine, measured side by side in one run, printed as a table.

    .venv/bin/python benchmarks/bench_chat.py [--tokens 128] [--repeats 3]

1. First load of the default model from its GGUF file (conversion into the safetensors
   cache included) vs a load from that cache.
2. Decoding speed: the plugin's streaming loop vs plain `model.generate` on the same
   weights, greedy, same prompt and token count.
3. Time to first token: through the HTTP API (SSE, a real server on loopback) vs calling
   the plugin directly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx  # noqa: E402
import torch  # noqa: E402

from generators.base import ChatMessage, SamplingParams, TextRequest  # noqa: E402
from generators.text.transformers_lm import TransformersLM  # noqa: E402
from webui.settings import DEFAULT_MODEL, default_models  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_load(cache: Path) -> tuple[float, float, TransformersLM]:
    options = default_models()[0].options
    fresh = TransformersLM(DEFAULT_MODEL, options, cache_dir=str(cache))
    gguf_s, _ = timed(fresh.load)
    fresh.unload()
    again = TransformersLM(DEFAULT_MODEL, options, cache_dir=str(cache))
    cache_s, _ = timed(again.load)
    return gguf_s, cache_s, again


def bench_decode(lm: TransformersLM, tokens: int, repeats: int) -> tuple[float, float]:
    request = TextRequest(messages=(ChatMessage("user", PROMPT),), params=SamplingParams(temperature=0, max_new_tokens=tokens))
    ids = torch.tensor([lm.encode(request)[0]])
    lm.generate(TextRequest(messages=request.messages, params=SamplingParams(temperature=0, max_new_tokens=8)))  # warm-up
    plugin, plain = [], []
    for _ in range(repeats):
        s, (_, last) = timed(lambda: lm.generate(request))
        plugin.append(last.stats.completion_tokens / s)
        s, out = timed(lambda: lm.model.generate(ids, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens))
        plain.append((out.shape[1] - ids.shape[1]) / s)
    return statistics.median(plugin), statistics.median(plain)


def bench_ttft(lm: TransformersLM, data_dir: Path, cache: Path, repeats: int) -> tuple[float, float]:
    from tests.conftest import free_port
    from webui.server import create_context, launch
    from webui.settings import Settings

    request = TextRequest(messages=(ChatMessage("user", PROMPT),), params=SamplingParams(temperature=0, max_new_tokens=8))
    direct = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(c for c in lm.stream(request) if c.text)
        direct.append(time.perf_counter() - start)

    settings = Settings(data_dir=data_dir, model_cache_dir=cache, port=free_port())
    ctx = create_context(settings)
    ctx.registry.load(DEFAULT_MODEL)
    demo = launch(ctx, quiet=True)
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "temperature": 0, "max_tokens": 8}
    api = []
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(repeats):
                start = time.perf_counter()
                with client.stream("POST", f"{demo.local_url}v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():
                        if '"content": "' in line and '"content": ""' not in line:
                            api.append(time.perf_counter() - start)
                            break
    finally:
        demo.close()
        ctx.store.close()
    return statistics.median(api), statistics.median(direct)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {DEFAULT_MODEL} (fp32, CPU)\n")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "models"
        gguf_s, cache_s, lm = bench_load(cache)
        plugin_tps, plain_tps = bench_decode(lm, args.tokens, args.repeats)
        api_ttft, direct_ttft = bench_ttft(lm, Path(tmp) / "data", cache, args.repeats)
    rows = [
        ("first load from GGUF (converts once)", f"{gguf_s:.2f} s", "load from safetensors cache", f"{cache_s:.2f} s",
         f"{gguf_s / cache_s:.1f}× faster from cache"),
        (f"plugin stream, greedy, {args.tokens} tok", f"{plugin_tps:.1f} tok/s", "plain model.generate", f"{plain_tps:.1f} tok/s",
         f"{plugin_tps / plain_tps:.2f}× plain"),
        ("time to first token via HTTP API", f"{api_ttft * 1000:.0f} ms", "calling the plugin directly",
         f"{direct_ttft * 1000:.0f} ms", f"+{(api_ttft - direct_ttft) * 1000:.0f} ms API overhead"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    header = ("measure", "value", "compared with", "value", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(f"| {line} |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
