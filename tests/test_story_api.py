"""The read-only story routes on a running in-process server, through httpx."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port
from webui.server import launch
from webui.services import chat as chat_svc
from webui.services import story as svc


@pytest.fixture
def server(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"fake": {"words": 4}, "other": {"words": 6}}, port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, demo.local_url.rstrip("/")
    demo.close()


def run(it):  # type: ignore[no-untyped-def]
    out = None
    for out in it:  # noqa: B007
        pass
    return out


def make_story(ctx, title: str, opening: str, owner: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """A story with a continuation, a retry (so two versions) and a snapshot."""
    owner = owner or ctx.default_owner
    st = svc.story_settings(ctx, "fake", {"max_new_tokens": 32, "seed": 1}, memory="Kept in memory.")
    sid = svc.create_story(ctx, owner, title, st, opening).id
    run(svc.continue_story(ctx, owner, sid, st))
    run(svc.retry(ctx, owner, sid, svc.story_settings(ctx, "other", {"seed": 1}, memory="Kept in memory.")))
    svc.save_snapshot(ctx, owner, sid, "first draft")
    return sid


def test_list_and_search_stories(server) -> None:
    ctx, url = server
    assert httpx.get(url + "/api/stories").json() == {"data": []}
    harbour = make_story(ctx, "Harbour", "The ship came in at dawn.")
    make_story(ctx, "Forest", "The trees whispered.")
    make_story(ctx, "Hidden", "Not yours.", owner="eve")
    listed = httpx.get(url + "/api/stories").json()["data"]
    assert [c["title"] for c in listed] == ["Forest", "Harbour"]  # newest first, only the caller's own
    assert set(listed[0]) == {"id", "title", "updated_at"} and listed[0]["updated_at"] >= listed[1]["updated_at"]
    found = httpx.get(url + "/api/stories", params={"q": "ship came"}).json()["data"]
    assert [c["id"] for c in found] == [harbour]  # the text is searched, not only titles
    assert httpx.get(url + "/api/stories", params={"q": "zzz"}).json()["data"] == []


def test_one_story_is_its_export_plus_what_is_visible(server) -> None:
    ctx, url = server
    sid = make_story(ctx, "Harbour", "The ship came in at dawn.")
    r = httpx.get(url + f"/api/stories/{sid}")
    assert r.status_code == 200
    data = r.json()
    view = svc.get_story(ctx, ctx.default_owner, sid)
    assert data["id"] == sid and data["format"] == svc.EXPORT_FORMAT and data["title"] == "Harbour"
    assert data["text"] == view.text and data["text"].startswith("The ship came in at dawn. w0(")
    assert [(p["author"], p["version"]) for p in data["visible"]] == [("user", [1, 1]), ("model", [2, 2])]
    assert [p["id"] for p in data["visible"]] == data["history"]["edits"][data["history"]["cursor"]]["passage_ids"]
    assert len(data["passages"]) == 3 and data["settings"]["memory"] == "Kept in memory."
    assert "last_context" not in data["settings"] and [s["name"] for s in data["snapshots"]] == ["first draft"]
    # what the API hands out imports back into the same story, alternatives included
    copy = svc.import_json(ctx, ctx.default_owner, data)
    assert copy.text == view.text and svc.switch_alternative(ctx, ctx.default_owner, copy.id, -1).passages[-1].version == 1


def test_unknown_or_foreign_ids_are_404_in_the_openai_shape(server) -> None:
    ctx, url = server
    foreign = make_story(ctx, "Eve's", "Private.", owner="eve")
    chat = chat_svc.add_user_message(ctx, ctx.default_owner, None, "a chat", chat_svc.reply_settings(ctx, "fake", {}, ""))
    for sid in ("deadbeef", foreign, chat.id):  # missing, someone else's, not a story
        r = httpx.get(url + f"/api/stories/{sid}")
        assert r.status_code == 404, sid
        err = r.json()["error"]
        assert err["type"] == "not_found_error" and err["code"] == "not_found" and "No story" in err["message"]
