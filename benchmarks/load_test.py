"""Load test on loopback: N simulated users for S seconds against `python launch.py` on a tiny model.

    .venv/bin/python benchmarks/load_test.py [--users 20] [--seconds 60] [--concurrency 4]

Half the users chat through the page's API (gradio_client: /send then /reply, each user in their
own chat), half through the OpenAI-compatible HTTP API. Every turn asks for 24 new tokens. At the
end the app is stopped and the database is checked: every turn that reported success is there
(page: the user message and a finished reply; API: a finished generation record). Prints
throughput, p50/p95 latency and the error count; exits 1 on any error or missing turn.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 24, "", "")  # temperature … stop, in the page's order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    page_turns: dict[str, int] = field(default_factory=dict)  # chat title -> turns that succeeded
    api_turns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_app(model_dir: Path, data_dir: Path, port: int, concurrency: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(ROOT / "launch.py"), "--model", str(model_dir), "--data-dir", str(data_dir),
           "--port", str(port), "--concurrency", str(concurrency), "--requests-per-minute", "0", "--queue-size", "256"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "AIGC Studio is ready" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc
    raise RuntimeError("the app did not start")


def page_user(url: str, model: str, name: str, deadline: float, tally: Tally) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    turn = 0
    while time.monotonic() < deadline:
        text = f"{name} turn {turn}: tell me about {random.choice(['tea', 'rivers', 'owls', 'maps'])}"
        start = time.perf_counter()
        try:
            client.predict(model, "", text, *SAMPLER, api_name="/send")
            chatbot, _notice, _alt = client.predict(model, "", *SAMPLER, api_name="/reply")
            if chatbot[-1]["role"] != "assistant":
                raise RuntimeError("no reply in the conversation")
        except Exception as exc:  # noqa: BLE001 - every failure is counted and printed
            with tally.lock:
                tally.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        with tally.lock:
            tally.latencies.append(time.perf_counter() - start)
            tally.page_turns[name] = tally.page_turns.get(name, 0) + 1
        turn += 1


def api_user(url: str, model: str, name: str, deadline: float, tally: Tally) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                r = http.post("/v1/chat/completions", json={
                    "model": model, "max_tokens": 24, "temperature": 0.8,
                    "messages": [{"role": "user", "content": f"{name}: a line about the sea"}]})
                if r.status_code != 200 or not r.json()["choices"][0]["message"]["content"]:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            except Exception as exc:  # noqa: BLE001
                with tally.lock:
                    tally.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            with tally.lock:
                tally.latencies.append(time.perf_counter() - start)
                tally.api_turns += 1


def check_database(db: Path, tally: Tally) -> list[str]:
    """Every successful turn is persisted, finished, and the database is intact."""
    problems = []
    con = sqlite3.connect(db)
    try:
        if (ok := con.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {ok}")
        for name, turns in tally.page_turns.items():
            rows = con.execute(
                "SELECT m.role, m.status FROM messages m JOIN sessions s ON s.id = m.session_id "
                "WHERE s.title LIKE ? ORDER BY m.seq", (f"{name} turn 0%",)).fetchall()
            users = sum(1 for role, _ in rows if role == "user")
            replies = sum(1 for role, status in rows if role == "assistant" and status == "ok")
            if replies < turns or users < turns:
                problems.append(f"{name}: {turns} turns reported, {users} user messages and {replies} finished replies stored")
        api_rows = con.execute("SELECT COUNT(*) FROM generations WHERE source = 'api' AND outcome = 'ok'").fetchone()[0]
        if api_rows < tally.api_turns:
            problems.append(f"API: {tally.api_turns} turns reported, {api_rows} finished generations stored")
        running = con.execute("SELECT COUNT(*) FROM generations WHERE outcome IN ('running', 'interrupted')").fetchone()[0]
        if running:
            problems.append(f"{running} generation(s) left unfinished")
    finally:
        con.close()
    return problems


def run(users: int, seconds: float, concurrency: int, work: Path) -> tuple[Tally, list[str], float, float]:
    from tests.tiny import save_smol_tokenizer, save_tiny_llama

    model_dir = save_tiny_llama(save_smol_tokenizer(work / "tok"), work / "tiny", context=2048)
    port = free_port()
    proc = start_app(model_dir, work / "data", port, concurrency)
    url = f"http://127.0.0.1:{port}"
    tally = Tally()
    try:
        # warm-up: load the model once so the timed window measures serving, not loading
        import httpx

        httpx.post(f"{url}/v1/chat/completions", timeout=300,
                   json={"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
        start = time.monotonic()
        deadline = start + seconds
        threads = [threading.Thread(target=page_user if i % 2 == 0 else api_user,
                                    args=(url, "tiny", f"user{i:02d}", deadline, tally)) for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    return tally, check_database(work / "data" / "studio.db", tally), elapsed, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=4, help="simultaneous generations of the model")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally, problems, elapsed, _ = run(args.users, args.seconds, args.concurrency, Path(tmp))
    turns = len(tally.latencies)
    lat = sorted(tally.latencies)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    print(f"{args.users} users ({(args.users + 1) // 2} page, {args.users // 2} HTTP API) for {elapsed:.0f} s, "
          f"concurrency {args.concurrency}, 24 tokens per turn, tiny random Llama")
    print("| turns | turns/s | tokens/s | p50 latency (ms) | p95 latency (ms) | errors | persisted |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {turns} | {turns / elapsed:.1f} | {24 * turns / elapsed:.0f} | {p(0.5):.0f} | {p(0.95):.0f} | "
          f"{len(tally.errors)} | {'all' if not problems else 'NO'} |")
    if lat:
        print(f"(mean {statistics.mean(lat) * 1000:.0f} ms)")
    for line in (tally.errors[:10] + problems):
        print("  problem:", line)
    return 1 if tally.errors or problems or not turns else 0


if __name__ == "__main__":
    sys.exit(main())
