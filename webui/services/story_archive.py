"""A story's keeping: named snapshots, fork, and JSON export/import that lose nothing.

An export holds every passage ever written (so every retry stays an alternative), the whole
undo log with its cursor (so Undo/Redo and the version shown come back), the settings and
the snapshots. Import checks all of it before writing anything and gives every row a new id;
Fork is an export imported at once, so the two can never drift apart.

    data = export_json(ctx, owner, story_id)     # JSON-able dict, "format": EXPORT_FORMAT
    view = import_json(ctx, owner, json_bytes)   # a new story, the same as the exported one
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from generators.base import InvalidOptionsError
from storage import repository as repo

from . import disclosure
from .context import AppContext, clean_title
from .story_values import (
    KIND,
    MAX_PASSAGE_CHARS,
    SnapshotSummary,
    StoryView,
    refuse_while_streaming,
    settings_from_json,
    story_row,
    view_of,
)

EXPORT_FORMAT = "aigc-studio.story.v2"
V1_FORMAT = "aigc-studio.story.v1"  # visible passages only; still imported
AUTHORS = ("user", "model")
STATUSES = ("ok", "cancelled", "error", "interrupted", "streaming")
MAX_IMPORT_BYTES = 64 * 2**20
MAX_ITEMS = 20_000  # passages, undo steps or snapshots in one import


class ImportRefused(InvalidOptionsError):
    """An import file that cannot be read as a story; nothing was written."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"This story file cannot be imported: {problem} Nothing was imported.")


# ------------------------------------------------------------------ snapshots


def save_snapshot(ctx: AppContext, owner: str, story_id: str, name: str) -> list[SnapshotSummary]:
    name = _snapshot_name(name)
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        rows = repo.story_passages(s, story)
        refuse_while_streaming(rows)
        repo.add_snapshot(s, story, name, [{"author": p.author, "text": p.text} for p in rows if p.text])
        return _snapshots(s, story)


def list_snapshots(ctx: AppContext, owner: str, story_id: str) -> list[SnapshotSummary]:
    with ctx.store.begin() as s:
        return _snapshots(s, story_row(s, owner, story_id))


def rename_snapshot(ctx: AppContext, owner: str, story_id: str, snapshot_id: str, name: str) -> list[SnapshotSummary]:
    name = _snapshot_name(name)
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        repo.rename_snapshot(s, story, snapshot_id, name)
        return _snapshots(s, story)


def delete_snapshot(ctx: AppContext, owner: str, story_id: str, snapshot_id: str) -> list[SnapshotSummary]:
    """Forget a named version (the story itself is untouched)."""
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        repo.delete_snapshot(s, story, snapshot_id)
        return _snapshots(s, story)


def restore_snapshot(ctx: AppContext, owner: str, story_id: str, snapshot_id: str) -> StoryView:
    """Return to a named version (an edit like any other: Undo goes back to before it)."""
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        refuse_while_streaming(repo.story_passages(s, story))
        snap = repo.get_snapshot(s, story, snapshot_id)
        ids = [repo.add_passage(s, story, p["author"], p["text"]).id for p in snap.passages]
        repo.record_edit(s, story, "restore", ids)
        return view_of(s, story, f"Restored “{snap.name}” (Undo goes back).")


def _snapshot_name(name: str | None) -> str:
    name = clean_title(name, "snapshot name")
    if not name:
        raise InvalidOptionsError("Give the snapshot a name.")
    return name


def _snapshots(s: Any, story: Any) -> list[SnapshotSummary]:
    return [
        SnapshotSummary(r.id, r.name, r.created_at, sum(len(p["text"]) for p in r.passages)) for r in repo.snapshots_of(s, story)
    ]


# ------------------------------------------------------------------ export


def export_json(ctx: AppContext, owner: str, story_id: str) -> dict[str, Any]:
    """Everything about the story as plain JSON-able data (see the module docstring), with its
    provenance block (`provenance`: the label, models, dates, who wrote each visible passage)."""
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        data = _export(s, story)
        parts = _parts(s, story)
        data["provenance"] = disclosure.block("story", story.title, parts, story.created_at)
        return data


def _parts(s: Any, story: Any) -> list[disclosure.Part]:
    """The visible passages in reading order, each with who wrote it."""
    return [disclosure.Part("model" if p.author == "model" else "person", p.text, p.model, p.created_at, p.id)
            for p in repo.story_passages(s, story)]


def export_text(ctx: AppContext, owner: str, story_id: str) -> str:
    """The story as plain text between its AI-generated label and its provenance block."""
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        view, parts = view_of(s, story), _parts(s, story)
        info = disclosure.block("story", story.title, parts, story.created_at)
    return disclosure.text(info, view.text.strip(), parts)


def export_markdown(ctx: AppContext, owner: str, story_id: str) -> str:
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        view, parts = view_of(s, story), _parts(s, story)
        info = disclosure.block("story", story.title, parts, story.created_at)
    lines = []
    if view.settings.get("premise"):
        lines += [f"*{view.settings['premise']}*", ""]
    lines.append(view.text.strip())
    return disclosure.markdown(info, view.title or "Untitled story", "\n".join(lines), parts)


def _export(s: Any, story: Any) -> dict[str, Any]:
    edits = repo.edits_of(s, story)
    cursor = next((i for i, e in enumerate(edits) if e.id == story.active_leaf_id), len(edits) - 1)
    return {
        "format": EXPORT_FORMAT,
        "title": story.title,
        "settings": {k: v for k, v in story.settings.items() if k != "last_context"},
        "created_at": story.created_at.isoformat(),
        "passages": [
            {"id": p.id, "group_id": p.group_id, "author": p.author, "text": p.text, "status": p.status, "model": p.model}
            for p in repo.all_passages(s, story)
        ],
        "history": {"edits": [{"action": e.action, "passage_ids": list(e.passage_ids)} for e in edits], "cursor": cursor},
        "snapshots": [
            {"name": r.name, "created_at": r.created_at.isoformat(), "passages": r.passages}
            for r in reversed(repo.snapshots_of(s, story))
        ],
    }


# ------------------------------------------------------------------ import and fork


@dataclass(frozen=True)
class _Snapshot:
    name: str
    created_at: datetime | None
    passages: list[dict[str, str]]


@dataclass(frozen=True)
class _Parsed:
    """An export checked from top to bottom, ready to write (ids are still the file's own)."""

    title: str
    settings: dict[str, Any]
    passages: list[dict[str, Any]]
    edits: list[tuple[str, list[str]]]
    cursor: int
    snapshots: list[_Snapshot]


def import_json(ctx: AppContext, owner: str, raw: bytes | str | dict[str, Any]) -> StoryView:
    """A new story from an export (v2, or the older v1 that kept only the visible text)."""
    if isinstance(raw, (bytes, str)) and len(raw) > MAX_IMPORT_BYTES:
        raise ImportRefused(f"it is larger than {MAX_IMPORT_BYTES // 2**20} MB.")
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportRefused(f"it is not valid JSON ({exc}). Pick a story exported as JSON.") from None
    parsed = _parse(data)
    if parsed.settings:
        try:
            settings_from_json(ctx, parsed.settings)  # refuses sampler values or levers out of bounds
        except InvalidOptionsError as exc:
            raise ImportRefused(f"its settings are not valid ({exc})") from None
    with ctx.store.begin() as s:
        return view_of(s, _write(s, owner, parsed, parsed.title), "Imported.")


def duplicate_story(ctx: AppContext, owner: str, story_id: str, title: str = "") -> StoryView:
    """A fork: a copy with every version, the undo history and the snapshots, to try another direction."""
    with ctx.store.begin() as s:
        src = story_row(s, owner, story_id)
        refuse_while_streaming(repo.story_passages(s, src))
        parsed = _parse(_export(s, src))
        new = _write(s, owner, parsed, clean_title(title) or f"{src.title} (fork)")
        return view_of(s, new, f"Forked from “{src.title}”.")


def _write(s: Any, owner: str, parsed: _Parsed, title: str) -> Any:
    story = repo.create_session(s, owner, KIND, title[:200] or "Imported story", parsed.settings)
    new_ids: dict[str, str] = {}
    for p in parsed.passages:
        group = new_ids[p["group_id"]] if p["group_id"] != p["id"] else None
        row = repo.add_passage(s, story, p["author"], p["text"], group_id=group, status=p["status"], model=p["model"])
        new_ids[p["id"]] = row.id
    rows = [repo.record_edit(s, story, action, [new_ids[i] for i in ids]) for action, ids in parsed.edits]
    story.active_leaf_id = rows[parsed.cursor].id
    for snap in parsed.snapshots:
        repo.add_snapshot(s, story, snap.name, snap.passages, snap.created_at)
    return story


def _parse(data: Any) -> _Parsed:
    if not isinstance(data, dict) or data.get("format") not in (EXPORT_FORMAT, V1_FORMAT):
        raise ImportRefused(f'it is not an AIGC Studio story export (expected "format": "{EXPORT_FORMAT}").')
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise ImportRefused('its "settings" is not an object.')
    raw_passages = _items(data, "passages")
    if data["format"] == V1_FORMAT:  # the visible text only, one passage after another
        raw_passages = [{**p, "id": str(i), "group_id": str(i)} if isinstance(p, dict) else p for i, p in enumerate(raw_passages)]
        history: Any = {"edits": [{"action": "import", "passage_ids": [str(i) for i in range(len(raw_passages))]}]}
    else:
        history = data.get("history")
        if not isinstance(history, dict):
            raise ImportRefused('it has no "history" of edits.')
    passages = [_passage(p, n) for n, p in enumerate(raw_passages, start=1)]
    seen: set[str] = set()
    for n, p in enumerate(passages, start=1):
        if p["id"] in seen:
            raise ImportRefused(f"passage {n} has the same id as an earlier one.")
        if p["group_id"] != p["id"] and p["group_id"] not in seen:
            raise ImportRefused(f"passage {n} is a version of a passage that does not come before it.")
        seen.add(p["id"])
    edits = []
    for n, e in enumerate(_items(history, "edits"), start=1):
        ids = e.get("passage_ids") if isinstance(e, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i in seen for i in ids):
            raise ImportRefused(f"undo step {n} lists passages that are not in the file.")
        edits.append((str(e.get("action") or "import")[:32], ids))
    if not edits:
        raise ImportRefused("its history has no edits, so it has no current text.")
    cursor = history.get("cursor", len(edits) - 1)
    if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor < len(edits):
        raise ImportRefused(f"its history cursor must be a whole number from 0 to {len(edits) - 1}.")
    snapshots = [_snapshot(x, n) for n, x in enumerate(_items(data, "snapshots", required=False), start=1)]
    title = data.get("title")
    return _Parsed(str(title) if isinstance(title, str) else "", settings, passages, edits, cursor, snapshots)


def _items(data: dict[str, Any], key: str, *, required: bool = True) -> list[Any]:
    value = data.get(key, None if required else [])
    if not isinstance(value, list):
        raise ImportRefused(f'it has no list of "{key}".')
    if len(value) > MAX_ITEMS:
        raise ImportRefused(f'it has {len(value):,} "{key}"; the limit is {MAX_ITEMS:,}.')
    return value


def _passage(p: Any, n: int) -> dict[str, Any]:
    if not isinstance(p, dict) or not isinstance(p.get("text"), str):
        raise ImportRefused(f"passage {n} has no text.")
    if not isinstance(p.get("id"), str) or not isinstance(p.get("group_id"), str):
        raise ImportRefused(f"passage {n} has no id or group id.")
    author, status, model = p.get("author", "user"), p.get("status") or "ok", p.get("model")
    if author not in AUTHORS:
        raise ImportRefused(f"passage {n} has author {author!r}; it must be one of {', '.join(AUTHORS)}.")
    if status not in STATUSES:
        raise ImportRefused(f"passage {n} has status {status!r}; it must be one of {', '.join(STATUSES)}.")
    if len(p["text"]) > MAX_PASSAGE_CHARS:
        raise ImportRefused(f"passage {n} is {len(p['text']):,} characters long; the limit is {MAX_PASSAGE_CHARS:,}.")
    return {
        "id": p["id"],
        "group_id": p["group_id"],
        "author": author,
        "text": p["text"],
        "status": "interrupted" if status == "streaming" else status,  # nothing is writing it any more
        "model": str(model)[:200] if model else None,
    }


def _snapshot(x: Any, n: int) -> _Snapshot:
    if not isinstance(x, dict) or not isinstance(x.get("passages"), list):
        raise ImportRefused(f"snapshot {n} has no list of passages.")
    texts = []
    for p in x["passages"]:
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or p.get("author", "user") not in AUTHORS:
            raise ImportRefused(f"a passage of snapshot {n} has no text or an unknown author.")
        if len(p["text"]) > MAX_PASSAGE_CHARS:
            raise ImportRefused(f"a passage of snapshot {n} is longer than {MAX_PASSAGE_CHARS:,} characters.")
        texts.append({"author": p.get("author", "user"), "text": p["text"]})
    created = x.get("created_at")
    try:
        when = datetime.fromisoformat(created) if isinstance(created, str) else None
    except ValueError:
        raise ImportRefused(f"snapshot {n} has a date that is not ISO 8601 ({created!r}).") from None
    return _Snapshot(str(x.get("name") or f"snapshot {n}")[:200], when, texts)
