"""Fault injection: kill -9 the studio mid-stream, restart, check that nothing was lost — N times.

    .venv/bin/python benchmarks/fault_kill9.py [--rounds 50]

Each round starts `python launch.py` (tiny random Llama, same data folder every round), opens the
same chat through the page's API, sends a message, waits until the streaming reply has reached the
database, sends SIGKILL, then restarts and checks with SQLite directly: `PRAGMA integrity_check`
is ok, every earlier turn is intact (same user messages, same replies as before), and the reply
that was cut off is there, non-empty, marked `interrupted`. Prints the tally; exits 1 on any loss.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.load_test import free_port  # noqa: E402

SAMPLER = (0.8, 0.95, 50, 0.0, 1.0, 2000, "", "")


class App:
    def __init__(self, model_dir: Path, data_dir: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--model", str(model_dir), "--data-dir", str(data_dir),
             "--port", str(self.port), "--requests-per-minute", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc.stdout is not None
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if "AIGC Studio is ready" in line:
                threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
                return
        raise RuntimeError("the app did not start:\n" + "".join(lines[-30:]))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def messages(db: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT role, status, content FROM messages ORDER BY seq").fetchall()
    finally:
        con.close()


def integrity(db: Path) -> str:
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def run(rounds: int, work: Path, log: bool = True) -> dict[str, int]:
    from gradio_client import Client

    from tests.tiny import save_smol_tokenizer, save_tiny_llama

    model_dir = save_tiny_llama(save_smol_tokenizer(work / "tok"), work / "tiny", layers=4, width=128, context=4096)
    data, db = work / "data", work / "data" / "studio.db"
    tally = {"rounds": 0, "killed_mid_stream": 0, "finished_before_kill": 0, "intact_after_restart": 0, "problems": 0}
    before: list[tuple[str, str, str]] = []
    chat_id = ""
    for n in range(rounds):
        app = App(model_dir, data)
        problems = []
        # the previous round's state, after recovery at this start
        now = messages(db) if db.exists() else []
        if (ok := integrity(db) if db.exists() else "ok") != "ok":
            problems.append(f"integrity_check: {ok}")
        if now[:len(before)] != before:
            problems.append("earlier turns changed")
        if before:
            if len(now) != len(before) + 2:
                problems.append(f"expected {len(before) + 2} messages, found {len(now)}")
            else:
                user, reply = now[-2], now[-1]
                if user != ("user", "ok", f"round {n - 1}: keep talking"):
                    problems.append(f"the last user message is {user!r}")
                if reply[0] != "assistant" or not reply[2] or reply[1] not in ("interrupted", "ok"):
                    problems.append(f"the cut-off reply is {reply[:2]} with {len(reply[2])} characters")
        tally["intact_after_restart"] += not problems and n > 0
        tally["problems"] += bool(problems)
        for p in problems:
            print(f"  round {n}: PROBLEM: {p}")
        if n == rounds - 1:
            app.proc.send_signal(signal.SIGINT)
            app.proc.wait(30)
            break
        client = Client(app.url, verbose=False)
        if chat_id:
            client.predict(chat_id, api_name="/open_chat")
        client.predict("tiny", "", f"round {n}: keep talking", *SAMPLER, api_name="/send")
        client.submit("tiny", "", *SAMPLER, api_name="/reply")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the streaming reply has reached the database
            rows = messages(db)
            if rows and rows[-1][0] == "assistant" and rows[-1][2]:
                break
            time.sleep(0.05)
        streaming = messages(db)[-1][1] == "streaming"
        app.proc.send_signal(signal.SIGKILL)
        app.proc.wait(30)
        tally["rounds"] += 1
        tally["killed_mid_stream" if streaming else "finished_before_kill"] += 1
        if not chat_id:
            con = sqlite3.connect(db)
            chat_id = con.execute("SELECT id FROM sessions").fetchone()[0]
            con.close()
        before = messages(db)[:-2]  # all earlier turns, exactly; this round's turn is checked after the restart
        if log:
            print(f"round {n + 1}/{rounds - 1}: killed {'mid-stream' if streaming else 'after the reply finished'}",
                  flush=True)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="kill -9 / restart cycles")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tally = run(args.rounds + 1, Path(tmp))
    print("| kills | mid-stream | reply finished first | restarts with everything intact | problems |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {tally['rounds']} | {tally['killed_mid_stream']} | {tally['finished_before_kill']} | "
          f"{tally['intact_after_restart']} | {tally['problems']} |")
    return 1 if tally["problems"] or tally["intact_after_restart"] != tally["rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
