"""A flood of wrong passwords on /login while a logged-in user works: her latency, quiet vs flooded.

    .venv/bin/python benchmarks/bench_login_flood.py [--flooders 8] [--seconds 20]

Starts `python launch.py` with one user (ann) on loopback. Ann calls GET /v1/models with her API key
and opens her page session (GET /gradio_api/info with her login cookie) in a loop: first quietly,
then while `--flooders` connections post wrong passwords to /login as fast as they are answered.
Prints her median and p95 latency in both phases side by side, and how the flood was answered.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, key: str, cookies: httpx.Cookies, seconds: float) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=60, cookies=cookies) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for path, headers in (("/v1/models", {"Authorization": f"Bearer {key}"}), ("/gradio_api/info", {})):
                t = time.perf_counter()
                r = c.get(path, headers=headers)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (path, r.status_code)
            time.sleep(0.05)
    return times


def flood(url: str, connections: int, stop: Any, out: Any) -> None:
    answers: Counter[int] = Counter()

    def one() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                answers[c.post(f"{url}/login", data={"username": "ann", "password": "wrong"}).status_code] += 1

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(answers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flooders", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        added = subprocess.run([sys.executable, str(ROOT / "launch.py"), "users", "add", "ann", "--password-stdin",
                                "--data-dir", str(data)], input="ann-password\n", capture_output=True, text=True,
                               cwd=ROOT, check=True)
        key = added.stdout.split("shown only now): ")[1].split()[0]
        port = free_port()
        config = data / "models.toml"
        config.write_text('[[models]]\nname = "lstm-fortunes"\nplugin = "char-lstm"\n'
                          'options = { weights = "builtin:lstm-fortunes" }\n')
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(data),
                                 "--config", str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if "AIGC Studio is ready" in line:
                    break
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            url = f"http://127.0.0.1:{port}"
            login = httpx.post(f"{url}/login", data={"username": "ann", "password": "ann-password"})
            assert login.status_code == 200
            measure(url, key, login.cookies, 2)  # warm up
            quiet = measure(url, key, login.cookies, args.seconds)
            # the flood runs in another process, so it does not compete with ann's client for this one's GIL
            stop = multiprocessing.Event()
            answers = multiprocessing.Queue()
            flooder = multiprocessing.Process(target=flood, args=(url, args.flooders, stop, answers))
            flooder.start()
            time.sleep(1)
            flooded = measure(url, key, login.cookies, args.seconds)
            stop.set()
            counts = answers.get(timeout=120)
            flooder.join(60)
        finally:
            proc.terminate()
            proc.wait(30)

    def row(name: str, xs: list[float]) -> str:
        return f"| {name} | {statistics.median(xs):.1f} | {statistics.quantiles(xs, n=20)[-1]:.1f} | {len(xs)} |"

    print(f"ann's requests (GET /v1/models and /gradio_api/info), {args.flooders} connections flooding /login\n")
    print("| phase | median (ms) | p95 (ms) | requests |\n|---|---:|---:|---:|")
    print(row("quiet", quiet))
    print(row("during the flood", flooded))
    print(f"\nratio of medians: {statistics.median(flooded) / statistics.median(quiet):.2f}x; "
          f"the flood's answers: {dict(sorted(counts.items()))}")


if __name__ == "__main__":
    main()
