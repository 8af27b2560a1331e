"""The HTTP API with the default settings, against the plugin called directly — side by side in one run.

    .venv/bin/python benchmarks/bench_api.py [--rounds 3] [--tokens 128] [--model smollm2-135m-instruct]

Starts `python launch.py` with no flags but a port and a temporary data folder (the model cache is shared
through AIGC_MODEL_CACHE_DIR, default data/models, so nothing is converted twice), and in this process loads
the same model with the same load options the studio gives it. Then, in interleaved rounds (the machine may be
shared: every round measures each configuration once, and the table shows the median and the range):

- direct: the plugin's `generate` on one greedy request (tokens / wall time, prefill included);
- API x1: one `POST /v1/chat/completions` (non-streaming, greedy), tokens / wall time;
- API x8, x16: that many different chats at once; aggregate tokens / wall time of the whole burst.

Prints one Markdown table: tok/s, API x1 as a share of direct, and x8 / x16 against x1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.load_test import free_port  # noqa: E402

TOPICS = ["tea", "rivers", "owls", "maps", "bridges", "violins", "glaciers", "bees", "clocks", "deserts", "ships",
          "forests", "comets", "markets", "bicycles", "lighthouses"]


def prompt(i: int) -> str:
    return f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]}, with many facts."


def direct_tok_s(gen, tokens: int) -> float:  # type: ignore[no-untyped-def]
    from generators.base import ChatMessage, SamplingParams, TextRequest

    request = TextRequest(messages=(ChatMessage("user", prompt(0)),), params=SamplingParams(temperature=0,
                                                                                            max_new_tokens=tokens))
    start = time.perf_counter()
    _, last = gen.generate(request)
    return last.stats.completion_tokens / (time.perf_counter() - start)


def api_tok_s(url: str, model: str, streams: int, tokens: int) -> float:
    import httpx

    def one(i: int) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": prompt(i)}], "temperature": 0,
                "max_tokens": tokens}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(one, range(streams)))
    return total / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--model", default="smollm2-135m-instruct")
    args = p.parse_args()

    from generators.text.transformers_lm import TransformersLM
    from webui.settings import Settings

    cache = os.environ.get("AIGC_MODEL_CACHE_DIR") or str(ROOT / "data" / "models")
    os.environ["AIGC_MODEL_CACHE_DIR"] = cache
    entry = next(e for e in Settings().model_list() if e.name == args.model)  # the studio's defaults, applied
    gen = TransformersLM(args.model, dict(entry.options), cache_dir=cache)
    gen.load()
    print(f"# {args.model}: {gen.precision()}, decoding: {gen.decode_loop}; {args.tokens} greedy tokens a reply",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_app_defaults(Path(tmp), port)
        url = f"http://127.0.0.1:{port}"
        try:
            api_tok_s(url, args.model, 1, 8)  # load the model in the server
            api_tok_s(url, args.model, 16, 8)  # and its batch shapes
            rows: dict[str, list[float]] = {"direct": [], "API x1": [], "API x8": [], "API x16": []}
            for r in range(args.rounds):
                rows["direct"].append(direct_tok_s(gen, args.tokens))
                rows["API x1"].append(api_tok_s(url, args.model, 1, args.tokens))
                rows["API x8"].append(api_tok_s(url, args.model, 8, args.tokens))
                rows["API x16"].append(api_tok_s(url, args.model, 16, args.tokens))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items()), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("\n| configuration | tok/s (median) | range | vs |\n|---|---:|---:|---|")
    vs = {"direct": "", "API x1": f"{med['API x1'] / med['direct']:.0%} of direct (target >= 90 %)",
          "API x8": f"{med['API x8'] / med['API x1']:.2f}x one chat (target >= 4x)",
          "API x16": f"{med['API x16'] / med['API x1']:.2f}x one chat (target >= 7x)"}
    for k, v in rows.items():
        print(f"| {k} | {med[k]:.1f} | {min(v):.1f}–{max(v):.1f} | {vs[k]} |")
    return 0


def start_app_defaults(data_dir: Path, port: int):  # type: ignore[no-untyped-def]
    """`python launch.py` with the defaults: only where to listen and keep data."""
    import subprocess
    import threading

    cmd = [sys.executable, str(ROOT / "launch.py"), "--data-dir", str(data_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "AIGC Studio is ready" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    raise RuntimeError("the app did not start")


if __name__ == "__main__":
    raise SystemExit(main())
