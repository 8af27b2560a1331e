"""A story's keeping: snapshots (save, rename, delete, restore), fork, and JSON export/import
that bring back every version, the undo history and the settings — or write nothing."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from sqlalchemy import func, select

from generators.base import InvalidOptionsError
from storage.models import SessionRecord, StoryEdit, StoryPassage, StorySnapshot
from storage.repository import NotFoundError
from webui.services import story as svc

OWNER = "local"


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"fake": {"words": 4}, "other": {"words": 6}})


def run(it):  # type: ignore[no-untyped-def]
    out = None
    for out in it:  # noqa: B007
        pass
    return out


def st(ctx, model: str = "fake"):  # type: ignore[no-untyped-def]
    return svc.story_settings(
        ctx, model, {"max_new_tokens": 64, "seed": 3, "temperature": 0.4, "top_k": 7, "stop": ["THE END"]},
        premise="A heist.", memory="Mara is a thief.", authors_note="Keep it tense.", an_depth=2,
        world_info=[["vault, safe", "The vault has a time lock."]], scan_depth=5,
    )  # fmt: skip


def rich_story(ctx) -> str:  # type: ignore[no-untyped-def]
    """Three versions of a continuation (the second one shown), a snapshot, and a redo step."""
    story = svc.create_story(ctx, OWNER, "Heist", st(ctx), "Mara looked at the vault.")
    run(svc.continue_story(ctx, OWNER, story.id, st(ctx)))
    run(svc.retry(ctx, OWNER, story.id, st(ctx, "other")))
    run(svc.retry(ctx, OWNER, story.id, st(ctx, "other")))
    svc.switch_alternative(ctx, OWNER, story.id, -1)
    svc.save_snapshot(ctx, OWNER, story.id, "three versions")
    svc.write(ctx, OWNER, story.id, "Then the alarm rang.")
    svc.undo(ctx, OWNER, story.id)  # the write is now a redo step
    return story.id


def shown(view: svc.StoryView) -> list[tuple[Any, ...]]:
    return [(p.author, p.text, p.status, p.model, p.version, p.versions) for p in view.passages]


def normalized(data: dict[str, Any]) -> dict[str, Any]:
    """An export with its ids replaced by positions (an import gives every row a new id)."""
    pos = {p["id"]: i for i, p in enumerate(data["passages"])}
    out = {k: v for k, v in data.items() if k not in ("created_at", "title", "provenance")}  # provenance: dates
    out["passages"] = [{**p, "id": pos[p["id"]], "group_id": pos[p["group_id"]]} for p in data["passages"]]
    out["history"] = {
        "cursor": data["history"]["cursor"],
        "edits": [{**e, "passage_ids": [pos[i] for i in e["passage_ids"]]} for e in data["history"]["edits"]],
    }
    return out


def walk(ctx, sid: str) -> list[list[tuple[Any, ...]]]:  # type: ignore[no-untyped-def]
    """Everything a writer can reach: redo, every alternative, then undo back to the start."""
    seen = [shown(svc.redo(ctx, OWNER, sid)), shown(svc.undo(ctx, OWNER, sid))]
    seen += [shown(svc.switch_alternative(ctx, OWNER, sid, +1)) for _ in range(3)]
    view = svc.get_story(ctx, OWNER, sid)
    while view.can_undo:
        view = svc.undo(ctx, OWNER, sid)
        seen.append(shown(view))
    return seen


def test_export_import_round_trip_keeps_everything(ctx) -> None:
    sid = rich_story(ctx)
    data = svc.export_json(ctx, OWNER, sid)
    assert data["format"] == "aigc-studio.story.v2" and len(data["passages"]) == 5  # opening, 3 versions, the write
    raw = json.dumps(data, ensure_ascii=False).encode()
    copy_view = svc.import_json(ctx, OWNER, raw)
    orig = svc.get_story(ctx, OWNER, sid)
    assert copy_view.id != sid and copy_view.title == "Heist" and "Imported" in copy_view.notice
    assert shown(copy_view) == shown(orig) and copy_view.passages[-1].version == 2
    assert (copy_view.can_undo, copy_view.can_redo) == (orig.can_undo, orig.can_redo) == (True, True)
    assert copy_view.settings == {k: v for k, v in orig.settings.items() if k != "last_context"}
    back = svc.settings_from_json(ctx, copy_view.settings)
    assert back == svc.settings_from_json(ctx, orig.settings) and back.params.top_k == 7
    assert back.levers.world_info[0].keys == ("vault", "safe") and back.params.stop == ("THE END",)
    assert [(x.name, x.chars, x.created_at) for x in svc.list_snapshots(ctx, OWNER, copy_view.id)] == [
        (x.name, x.chars, x.created_at) for x in svc.list_snapshots(ctx, OWNER, sid)
    ]
    again = svc.export_json(ctx, OWNER, copy_view.id)
    assert normalized(again) == normalized(data)
    assert walk(ctx, copy_view.id) == walk(ctx, sid)  # the same versions to flip, the same undo steps


def test_fork_is_a_full_copy_that_lives_its_own_life(ctx) -> None:
    sid = rich_story(ctx)
    fork = svc.duplicate_story(ctx, OWNER, sid)
    assert fork.title == "Heist (fork)" and "Forked from “Heist”" in fork.notice
    assert shown(fork) == shown(svc.get_story(ctx, OWNER, sid)) and fork.can_redo
    assert normalized(svc.export_json(ctx, OWNER, fork.id)) == normalized(svc.export_json(ctx, OWNER, sid))
    assert len(svc.list_snapshots(ctx, OWNER, fork.id)) == 1
    svc.write(ctx, OWNER, fork.id, "Only in the fork.")
    svc.delete_snapshot(ctx, OWNER, fork.id, svc.list_snapshots(ctx, OWNER, fork.id)[0].id)
    assert "Only in the fork" not in svc.get_story(ctx, OWNER, sid).text
    assert len(svc.list_snapshots(ctx, OWNER, sid)) == 1
    assert walk(ctx, sid)[-1] == [("user", "Mara looked at the vault.", "ok", None, 1, 1)]


def test_v1_exports_still_import(ctx) -> None:
    v1 = {"format": "aigc-studio.story.v1", "title": "Old", "settings": {},
          "passages": [{"author": "user", "text": "Old text."}, {"author": "model", "text": " More.", "model": "fake"}],
          "snapshots": [{"name": "s", "passages": [{"author": "user", "text": "Old text."}]}]}  # fmt: skip
    view = svc.import_json(ctx, OWNER, v1)
    assert view.text == "Old text. More." and [p.author for p in view.passages] == ["user", "model"]
    assert not view.can_undo and [x.name for x in svc.list_snapshots(ctx, OWNER, view.id)] == ["s"]


def _break(good: dict[str, Any], how: str) -> Any:
    d = copy.deepcopy(good)
    p, h = d["passages"], d["history"]
    match how:
        case "not json":
            return b"{nope"
        case "other format":
            return {"format": "aigc-studio.session.v1"}
        case "no passages":
            d["passages"] = "abc"
        case "passage without text":
            del p[1]["text"]
        case "unknown author":
            p[1]["author"] = "narrator"
        case "unknown status":
            p[1]["status"] = "weird"
        case "duplicate id":
            p[2]["id"] = p[1]["id"]
        case "group from the future":
            p[1]["group_id"] = p[3]["id"]
        case "ghost passage in history":
            h["edits"][-1]["passage_ids"].append("ghost")
        case "cursor out of range":
            h["cursor"] = 99
        case "no history":
            del d["history"]
        case "bad settings":
            d["settings"]["an_depth"] = 500
        case "bad snapshot":
            d["snapshots"][0]["passages"] = None
        case "bad snapshot date":
            d["snapshots"][0]["created_at"] = "yesterday"
        case "huge passage":
            p[-1]["text"] = "x" * 100_001
    return d


BROKEN = {
    "not json": "not valid JSON", "other format": "not an AIGC Studio story export",
    "no passages": 'no list of "passages"', "passage without text": "passage 2 has no text",
    "unknown author": "author 'narrator'", "unknown status": "status 'weird'", "duplicate id": "same id",
    "group from the future": "does not come before it", "ghost passage in history": "undo step 6 lists passages",
    "cursor out of range": "cursor must be a whole number from 0 to", "no history": 'no "history"',
    "bad settings": "settings are not valid .*depth must be between", "bad snapshot": "snapshot 1 has no list",
    "bad snapshot date": "not ISO 8601", "huge passage": "the limit is 100,000",
}  # fmt: skip


def _counts(ctx) -> list[int]:  # type: ignore[no-untyped-def]
    with ctx.store.begin() as s:
        return [s.scalar(select(func.count()).select_from(t)) for t in (SessionRecord, StoryPassage, StoryEdit, StorySnapshot)]


@pytest.mark.parametrize("how", list(BROKEN))
def test_malformed_imports_are_refused_and_write_nothing(ctx, how: str) -> None:
    good = svc.export_json(ctx, OWNER, rich_story(ctx))
    before = _counts(ctx)
    with pytest.raises(InvalidOptionsError, match=BROKEN[how]) as info:
        svc.import_json(ctx, OWNER, _break(good, how))
    assert "Nothing was imported" in str(info.value)
    assert _counts(ctx) == before


def test_snapshots_rename_delete_restore(ctx) -> None:
    sid = svc.create_story(ctx, OWNER, "Snaps", st(ctx), "One.").id
    svc.save_snapshot(ctx, OWNER, sid, "first")
    svc.write(ctx, OWNER, sid, "Two.")
    snaps = svc.save_snapshot(ctx, OWNER, sid, "second")
    assert [x.name for x in snaps] == ["second", "first"]
    first = snaps[1].id
    renamed = svc.rename_snapshot(ctx, OWNER, sid, first, "  the opening  ")
    assert {x.id: x.name for x in renamed}[first] == "the opening"
    assert svc.restore_snapshot(ctx, OWNER, sid, first).text == "One."
    left = svc.delete_snapshot(ctx, OWNER, sid, first)
    assert [x.name for x in left] == ["second"] and svc.get_story(ctx, OWNER, sid).text == "One."  # the story is untouched
    with pytest.raises(NotFoundError, match="no longer exists"):
        svc.restore_snapshot(ctx, OWNER, sid, first)
    with pytest.raises(NotFoundError):
        svc.delete_snapshot(ctx, OWNER, sid, first)
    with pytest.raises(InvalidOptionsError, match="Give the snapshot a name"):
        svc.rename_snapshot(ctx, OWNER, sid, left[0].id, "  ")
    other = svc.create_story(ctx, OWNER, "Other", st(ctx), "x").id
    with pytest.raises(NotFoundError):  # a snapshot is reached only through its own story
        svc.rename_snapshot(ctx, OWNER, other, left[0].id, "stolen")
    with pytest.raises(NotFoundError):  # nor by someone else
        svc.delete_snapshot(ctx, "eve", sid, left[0].id)
    assert [x.name for x in svc.list_snapshots(ctx, OWNER, sid)] == ["second"]


def test_export_text_and_markdown(ctx) -> None:
    sid = rich_story(ctx)
    text = svc.get_story(ctx, OWNER, sid).text
    exported = svc.export_text(ctx, OWNER, sid)
    assert exported.startswith("AI-GENERATED CONTENT: THIS STORY CONTAINS TEXT WRITTEN BY A LANGUAGE MODEL")
    assert f"\n\n{text.strip()}\n\n----" in exported and "PROVENANCE" in exported
    md = svc.export_markdown(ctx, OWNER, sid)
    assert md.startswith("# Heist\n\n> **AI-generated content: this story contains text written by a language model")
    assert f"\n\n*A heist.*\n\n{text.strip()}\n\n---\n\n## Provenance" in md
