"""The Story tab: builds without launching, and works through gradio_client (fake model)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file

from tests.conftest import free_port, wait_until
from webui.app import build_app
from webui.server import launch

# The /write and /new_story inputs in the page's order: title, model, premise, your text, memory,
# author's note, depth, world info, scan depth, then the sampler (temperature … stop strings).
SAMPLER = (0.0, 0.95, 50, 0.0, 1.0, 64, "7", "")
NO_WI = {"headers": ["Keywords (comma-separated)", "Entry"], "data": [["", ""]]}


def page(text: str = "", *, title: str = "", model: str = "quick", premise: str = "", memory: str = "",
         note: str = "", depth: int = 3, wi: dict | None = None, tokens: int = 64) -> tuple:  # fmt: skip
    return (title, premise, model, text, memory, note, depth, wi or NO_WI, 10, *SAMPLER[:5], tokens, *SAMPLER[6:])


def test_build_app_has_the_story_api(make_ctx) -> None:
    demo = build_app(make_ctx())
    assert isinstance(demo, gr.Blocks)
    names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"write", "continue", "retry", "undo", "redo", "story_stop", "new_story", "open_story", "list_stories",
            "fork_story", "delete_story", "save_snapshot", "restore_snapshot", "rename_snapshot", "delete_snapshot",
            "story_export_json", "import_story", "edit_passage"} <= names  # fmt: skip
    assert {"send", "reply", "stop"} <= names  # chat is still there


@pytest.fixture
def app(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"slow": {"words": 100_000, "delay_s": 0.02}, "quick": {"words": 5}}, port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, Client(demo.local_url, verbose=False)
    demo.close()


def file_path(out) -> Path:  # type: ignore[no-untyped-def]
    """A gr.File update comes back as {"value": path or FileData, ...}."""
    value = out.get("value", out) if isinstance(out, dict) else out
    return Path(value["path"] if isinstance(value, dict) else value)


def doc_text(html: str) -> str:
    import re
    from html import unescape

    return unescape(re.sub(r"<span class=\"story-status\">.*?</span>|<[^>]+>", "", html))


def test_write_continue_retry_undo_through_the_page_api(app) -> None:
    ctx, client = app
    out = client.predict(*page("The lighthouse keeper woke.", title="Keeper"), api_name="/write")
    assert "The lighthouse keeper woke." in doc_text(out[0])
    updates = list(client.submit(api_name="/continue"))
    html, notice, alt, passage, inspector, sent = updates[-1]
    text = doc_text(html)
    assert text.startswith("The lighthouse keeper woke. w0(")
    assert "| Story (line 1) |" in inspector and "As the model read it" in inspector
    assert sent.startswith("System: You are a skilled fiction writer") and "The lighthouse keeper woke." in sent
    html, _, alt, *_ = client.predict(api_name="/retry")
    assert "2 of 2" in alt and doc_text(html) == text  # the fake model is deterministic for a fixed seed
    html, _, alt, *_ = client.predict(api_name="/story_previous_version")
    assert "1 of 2" in alt and doc_text(html) == text
    html, notice, alt, *_ = client.predict(api_name="/undo")
    assert "2 of 2" in alt and "Undid the switch to another version" in notice
    html, notice, alt, *_ = client.predict(api_name="/undo")
    assert "1 of 2" in alt and "Undid the retry" in notice
    html, notice, alt, *_ = client.predict(api_name="/undo")
    assert doc_text(html) == "The lighthouse keeper woke." and "Undid the continuation" in notice
    html, notice, alt, *_ = client.predict(api_name="/redo")
    assert doc_text(html) == text
    stories = client.predict("", api_name="/list_stories")
    assert [c[0] for c in stories["choices"]] == ["Keeper"]


def test_settings_are_remembered_and_levers_reach_the_context(app) -> None:
    ctx, client = app
    wi = {"headers": NO_WI["headers"], "data": [["keeper", "The keeper is 80 years old."]]}
    client.predict(*page("The keeper woke.", memory="It is 1890.", note="Gloomy.", depth=1, wi=wi), api_name="/write")
    *_, inspector, sent = list(client.submit(api_name="/continue"))[-1]
    assert "It is 1890." in sent and "The keeper is 80 years old." in sent and "[Author's note: Gloomy.]" in sent
    assert "| Memory |" in inspector and "World info [keeper]" in inspector
    sid = client.predict("", api_name="/list_stories")["value"]
    fresh = Client(client.src, verbose=False)
    opened = fresh.predict(sid, "", api_name="/open_story")
    values = dict(zip(["document", "notice", "alt", "passage", "inspector", "sent", "title", "passage_text", "model",
                       "premise", "memory", "authors_note"], opened, strict=False))  # fmt: skip
    assert values["memory"] == "It is 1890." and values["authors_note"] == "Gloomy."


def test_stop_keeps_the_text_and_errors_are_messages(app) -> None:
    ctx, client = app
    with pytest.raises(Exception, match="story is empty"):
        client.predict(*page(""), api_name="/write")
    with pytest.raises(Exception, match="greater than maximum value 100"):  # the slider refuses it
        client.predict(*page("x", depth=101), api_name="/write")
    client.predict(*page("Night fell.", model="slow", tokens=2048), api_name="/write")  # 40 s unless stopped
    with pytest.raises(Exception, match="does not end with a continuation"):
        client.predict(api_name="/retry")
    job = client.submit(api_name="/continue")
    wait_until(lambda: len(job.outputs()) >= 2, "the continuation to start streaming")
    client.predict(api_name="/story_stop")
    wait_until(job.done, "Stop to end the continuation")
    html, notice, *_ = job.outputs()[-1]
    assert "Stopped after" in notice and "(stopped)" in html, (notice, html[-300:], len(job.outputs()))


def test_snapshot_fork_export_import_delete(app, tmp_path: Path) -> None:
    ctx, client = app
    client.predict(*page("Chapter one.", title="Saga"), api_name="/write")
    list(client.submit(api_name="/continue"))
    snaps = client.predict("draft", api_name="/save_snapshot")[0]
    assert snaps["choices"][0][0].startswith("draft ·")
    snap_id = snaps["choices"][0][1]
    renamed = client.predict(snap_id, "final draft", api_name="/rename_snapshot")[0]
    assert renamed["choices"][0][0].startswith("final draft ·") and renamed["value"] == snap_id
    client.predict("spare", api_name="/save_snapshot")
    left = client.predict(snap_id, api_name="/delete_snapshot")  # (the hidden confirm row is not an API output)
    assert [c[0].split(" ·")[0] for c in left["choices"]] == ["spare"]
    path = file_path(client.predict(api_name="/story_export_json"))
    data = json.loads(path.read_text())
    assert data["format"] == "aigc-studio.story.v2" and data["title"] == "Saga"
    assert [s["name"] for s in data["snapshots"]] == ["spare"]
    assert file_path(client.predict(api_name="/story_export_md")).read_text().startswith("# Saga")
    forked = client.predict("", api_name="/fork_story")
    assert "Forked from" in forked[1]
    imported = client.predict(handle_file(str(path)), "", api_name="/import_story")
    assert "Imported" in imported[1]
    titles = sorted(c[0] for c in client.predict("", api_name="/list_stories")["choices"])
    assert titles == ["Saga", "Saga", "Saga (fork)"]
    client.predict("", api_name="/delete_story")
    assert len(client.predict("", api_name="/list_stories")["choices"]) == 2
