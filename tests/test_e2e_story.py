"""End to end on the real default model: `python launch.py` in a subprocess, a story written
through gradio_client, then a restart on the same data folder — everything is still there."""

from __future__ import annotations

import re
import signal
from html import unescape
from pathlib import Path

import pytest
from gradio_client import Client

from webui.settings import DEFAULT_MODEL

pytestmark = pytest.mark.e2e

NO_WI = {"headers": ["Keywords (comma-separated)", "Entry"], "data": [["", ""]]}


def page(text: str, title: str) -> tuple:
    sampler = (0.8, 0.95, 50, 0.0, 1.1, 40, "", "")  # temperature … stop strings; empty seed = random
    return (title, "a gentle fairy tale", DEFAULT_MODEL, text, "Elsa is a young baker.", "Keep it cheerful.", 2, NO_WI, 10,
            *sampler)  # fmt: skip


def doc_text(html: str) -> str:
    # the story's own text: not its status marks nor the "Waiting for the model — …" banner shown while it loads
    html = re.sub(r'<span class="story-status">.*?</span>|<div class="story-loading"[^>]*>.*?</div>', "", html)
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_story_continue_retry_undo_restart_everything_is_there(running_app, tmp_path: Path) -> None:
    data = tmp_path / "data"
    app = running_app(data)
    client = Client(app.url, verbose=False)

    client.predict(*page("Elsa opened her bakery at dawn.", "The Baker"), api_name="/write")
    updates = list(client.submit(api_name="/continue"))
    assert len(updates) > 2  # it streamed
    first = doc_text(updates[-1][0])
    assert first.startswith("Elsa opened her bakery at dawn.") and len(first) > len("Elsa opened her bakery at dawn.") + 5
    html, notice, alt, _, inspector, sent = client.predict(api_name="/continue")
    second = doc_text(html)
    assert second.startswith(first) and len(second) > len(first)
    assert "| Memory |" in inspector and "Elsa is a young baker." in sent and "[Author's note: Keep it cheerful.]" in sent

    html, _, alt, *_ = client.predict(api_name="/retry")
    assert "2 of 2" in alt and doc_text(html).startswith(first)
    html, notice, alt, *_ = client.predict(api_name="/undo")
    assert doc_text(html) == second and "1 of 2" in alt and "Undid the retry" in notice
    story_id = client.predict("", api_name="/list_stories")["value"]

    # Ctrl-C, then start again on the same data folder
    assert app.stop(signal.SIGINT) == 0
    app2 = running_app(data)
    fresh = Client(app2.url, verbose=False)
    assert [c[1] for c in fresh.predict("", api_name="/list_stories")["choices"]] == [story_id]
    opened = fresh.predict(story_id, "", api_name="/open_story")
    assert doc_text(opened[0]) == second and "1 of 2" in opened[2]
    assert opened[6] == "The Baker" and opened[10] == "Elsa is a young baker."  # title, memory
    assert "Elsa is a young baker." in opened[5]  # the context inspector remembers the last request
    html, _, alt, *_ = fresh.predict(api_name="/redo")  # the undone retry is still there
    assert "2 of 2" in alt and doc_text(html).startswith(first)
    html, *_ = fresh.predict(api_name="/undo")
    assert doc_text(html) == second


def test_kill_mid_continuation_keeps_what_was_shown(running_app, tmp_path: Path) -> None:
    import time

    import httpx

    data = tmp_path / "data"
    app = running_app(data)
    client = Client(app.url, verbose=False)
    opening = "The storm reached the harbour at midnight."
    title, premise, model, text, memory, note, depth, wi, scan, *sampler = page(opening, "Storm")
    sampler[5] = 400  # max new tokens: long enough to be cut off
    client.predict(title, premise, model, text, memory, note, depth, wi, scan, *sampler, api_name="/write")
    shown = len(opening)
    for _ in range(4):  # a sampled continuation may reach its end of text before the kill: then Continue again
        job = client.submit(api_name="/continue")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not job.done():
            outs = job.outputs()
            if outs and len(doc_text(outs[-1][0])) > shown + 60:
                break
            time.sleep(0.1)
        time.sleep(1.2)  # past one save interval
        if not job.done():
            break
        shown = len(doc_text(job.outputs()[-1][0]))
    else:
        pytest.fail("four continuations of up to 400 tokens all ended on their own within a second and a half")
    seen = doc_text(job.outputs()[-1][0])
    app.stop(signal.SIGKILL)

    app2 = running_app(data)
    story = httpx.get(f"{app2.url}/api/stories").json()["data"][0]
    full = httpx.get(f"{app2.url}/api/stories/{story['id']}").json()
    assert full["text"].startswith(opening)
    kept = full["text"][len(opening):].strip()
    assert len(kept) > 30 and seen.replace(" ", "").startswith(full["text"].replace(" ", "")[: len(opening) + 30])
    assert full["visible"][-1]["status"] == "interrupted"
