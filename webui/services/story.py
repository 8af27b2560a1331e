"""Story use cases: write, continue, retry, undo/redo, edit, snapshots, list, export/import.

A story is a `sessions` row (kind="story") whose settings hold the model, sampler, premise,
memory, author's note, world info and the last context sent. Its text is an ordered list of
passages; every change is an edit in an undo log (see storage/models.py), so undo/redo
survive a restart and nothing written is ever overwritten.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from generators.base import InvalidOptionsError, SamplingParams, TextGenerator
from storage import repository as repo
from storage.db import StorageError

from .context import AppContext
from .generation import sampling_params, stream_text
from .story_context import Levers, WorldEntry, assemble_context, report, reserved_tokens, to_request

KIND = "story"
EXPORT_FORMAT = "aigc-studio.story.v1"
MAX_PASSAGE_CHARS = 100_000
MAX_LEVER_CHARS = 50_000
STATUS_NOTE = {"cancelled": "stopped", "error": "failed", "interrupted": "interrupted", "streaming": "writing…"}
NO_SPACE_BEFORE = ".,;:!?)]}'\"’”…-"


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class StorySettings:
    """How continuations are made; stored on the story so it is remembered."""

    model: str
    params: SamplingParams
    levers: Levers = field(default_factory=Levers)

    def as_json(self) -> dict[str, Any]:
        lv = self.levers
        return {
            "model": self.model,
            "params": self.params.model_dump(mode="json"),
            "premise": lv.premise,
            "memory": lv.memory,
            "authors_note": lv.authors_note,
            "an_depth": lv.an_depth,
            "world_info": [{"keys": list(e.keys), "text": e.text} for e in lv.world_info],
            "scan_depth": lv.scan_depth,
        }


def parse_world_info(rows: Sequence[Any] | None) -> tuple[WorldEntry, ...]:
    """World-info entries from [{"keys": [...], "text"}] or table rows [keys (comma-separated), text]."""
    out = []
    for row in rows or ():
        if isinstance(row, dict):
            keys, text = row.get("keys") or [], str(row.get("text") or "")
        else:
            keys, text = (list(row) + ["", ""])[:2]
            text = str(text or "")
        if isinstance(keys, str):
            keys = keys.split(",")
        keys = tuple(k.strip() for k in keys if k and str(k).strip())
        if not keys and not text.strip():
            continue
        if not keys:
            raise InvalidOptionsError(f"The world-info entry {text[:40]!r}… has no keywords: add at least one.")
        out.append(WorldEntry(keys, text.strip()))
    return tuple(out)


def story_settings(
    ctx: AppContext,
    model: str | None,
    params: dict[str, Any] | SamplingParams | None,
    *,
    premise: str = "",
    memory: str = "",
    authors_note: str = "",
    an_depth: int = 3,
    world_info: Sequence[Any] | None = None,
    scan_depth: int = 10,
) -> StorySettings:
    """Validate a continuation's settings (raises InvalidOptionsError with a readable message)."""
    name = model or ctx.default_model
    ctx.registry.get(name)  # raises UnknownGeneratorError with the list of models
    for label, text in (("premise", premise), ("memory", memory), ("author's note", authors_note)):
        if len(text or "") > MAX_LEVER_CHARS:
            raise InvalidOptionsError(f"The {label} is {len(text):,} characters long; the limit is {MAX_LEVER_CHARS:,}.")
    try:
        an_depth, scan_depth = int(an_depth), int(scan_depth)
    except (TypeError, ValueError):
        raise InvalidOptionsError("The author's note depth and the scan depth must be whole numbers.") from None
    levers = Levers(
        premise=(premise or "").strip(),
        memory=(memory or "").strip(),
        authors_note=(authors_note or "").strip(),
        an_depth=an_depth,
        world_info=parse_world_info(world_info),
        scan_depth=scan_depth,
    )
    levers.validate()
    return StorySettings(name, sampling_params(params), levers)


def settings_from_json(ctx: AppContext, data: dict[str, Any]) -> StorySettings:
    """The settings stored on a story (lenient: unknown models fall back to the default)."""
    model = data.get("model") if data.get("model") in ctx.registry.names("text") else ctx.default_model
    return story_settings(
        ctx,
        model,
        data.get("params") or {},
        premise=data.get("premise", ""),
        memory=data.get("memory", ""),
        authors_note=data.get("authors_note", ""),
        an_depth=data.get("an_depth", 3),
        world_info=data.get("world_info") or (),
        scan_depth=data.get("scan_depth", 10),
    )


@dataclass(frozen=True)
class ViewPassage:
    id: str
    author: str  # user | model
    text: str
    status: str
    version: int  # 1-based among the alternatives of this place in the story
    versions: int
    model: str | None = None


@dataclass(frozen=True)
class StoryView:
    """A UI-ready snapshot of one story as it stands now."""

    id: str
    title: str
    passages: tuple[ViewPassage, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    can_undo: bool = False
    can_redo: bool = False
    notice: str = ""

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.passages)

    @property
    def last_context(self) -> dict[str, Any] | None:
        return self.settings.get("last_context")


@dataclass(frozen=True)
class StorySummary:
    id: str
    title: str
    updated_at: datetime


@dataclass(frozen=True)
class SnapshotSummary:
    id: str
    name: str
    created_at: datetime
    chars: int


EMPTY = StoryView("", "", ())


def _view(s: Any, story: Any, notice: str = "") -> StoryView:
    rows = repo.story_passages(s, story)
    groups = repo.group_sizes(s, story, [p.group_id for p in rows])
    passages = tuple(
        ViewPassage(p.id, p.author, p.text, p.status, groups[p.group_id].index(p.id) + 1, len(groups[p.group_id]), p.model)
        for p in rows
    )
    undo, redo = repo.undo_redo_available(s, story)
    return StoryView(story.id, story.title, passages, dict(story.settings), undo, redo, notice)


def _get(s: Any, owner: str, story_id: str | None) -> Any:
    if not story_id:
        raise InvalidOptionsError("Open or create a story first.")
    return repo.get_session(s, owner, story_id, KIND)


def _refuse_while_streaming(rows: Sequence[Any]) -> None:
    if rows and rows[-1].status == "streaming":
        raise InvalidOptionsError("The model is still writing: wait for it to finish or press Stop.")


def _clean_passage(text: str) -> str:
    if len(text) > MAX_PASSAGE_CHARS:
        raise InvalidOptionsError(f"The text is {len(text):,} characters long; the limit is {MAX_PASSAGE_CHARS:,}.")
    return text


def joined(before: str, text: str) -> str:
    """`text` with a space in front when it would otherwise glue onto the previous word."""
    if before and text and not before[-1].isspace() and not text[0].isspace() and text[0] not in NO_SPACE_BEFORE:
        return " " + text
    return text


# ------------------------------------------------------------------ reading


def get_story(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    with ctx.store.begin() as s:
        return _view(s, _get(s, owner, story_id))


def list_stories(ctx: AppContext, owner: str, query: str = "") -> list[StorySummary]:
    with ctx.store.begin() as s:
        return [StorySummary(c.id, c.title or "Untitled story", c.updated_at) for c in repo.list_sessions(s, owner, KIND, query)]


# ------------------------------------------------------------------ creating and writing


def create_story(ctx: AppContext, owner: str, title: str, settings: StorySettings, opening: str = "") -> StoryView:
    """A new story (its first edit is the empty or opening text, so undo stops there)."""
    opening = _clean_passage(opening or "")
    with ctx.store.begin() as s:
        story = repo.create_session(s, owner, KIND, (title or "").strip()[:200] or "Untitled story", settings.as_json())
        ids = [repo.add_passage(s, story, "user", opening).id] if opening.strip() else []
        repo.record_edit(s, story, "create", ids)
        return _view(s, story, "Story created.")


def save_settings(ctx: AppContext, owner: str, story_id: str, settings: StorySettings) -> StoryView:
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        story.settings = {**story.settings, **settings.as_json()}
        return _view(s, story)


def write(ctx: AppContext, owner: str, story_id: str, text: str) -> StoryView:
    """Append the writer's own text as a passage."""
    text = _clean_passage(text or "")
    if not text.strip():
        raise InvalidOptionsError("Type some text to add first.")
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        rows = repo.story_passages(s, story)
        _refuse_while_streaming(rows)
        passage = repo.add_passage(s, story, "user", joined("".join(p.text for p in rows), text))
        repo.record_edit(s, story, "write", [p.id for p in rows] + [passage.id])
        return _view(s, story)


def edit_passage(ctx: AppContext, owner: str, story_id: str, passage_id: str, text: str) -> StoryView:
    """Replace a passage's text by hand (a new version; undo brings the old one back)."""
    text = _clean_passage(text or "")
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        rows = repo.story_passages(s, story)
        _refuse_while_streaming(rows)
        ids = [p.id for p in rows]
        if passage_id not in ids:
            raise InvalidOptionsError("That passage is not part of the story as it stands now.")
        old = rows[ids.index(passage_id)]
        if old.text == text:
            return _view(s, story, "Nothing changed.")
        if text.strip():
            new = repo.add_passage(s, story, old.author, text, model=old.model)
            ids[ids.index(passage_id)] = new.id
            notice = "Passage edited (Undo brings the old text back)."
        else:
            ids.remove(passage_id)
            notice = "Passage removed (Undo brings it back)."
        repo.record_edit(s, story, "edit", ids)
        return _view(s, story, notice)


def undo(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    return _step(ctx, owner, story_id, -1)


def redo(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    return _step(ctx, owner, story_id, +1)


def _step(ctx: AppContext, owner: str, story_id: str, step: int) -> StoryView:
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        _refuse_while_streaming(repo.story_passages(s, story))
        before = repo.current_edit(s, story)
        target = repo.step_edit(s, story, step)
        if target is None or before is None:
            raise InvalidOptionsError("Nothing to undo." if step < 0 else "Nothing to redo.")
        return _view(s, story, f"Undid “{before.action}”." if step < 0 else f"Redid “{target.action}”.")


def switch_alternative(ctx: AppContext, owner: str, story_id: str, step: int, passage_id: str | None = None) -> StoryView:
    """Show another version of a passage (by default the newest one that has alternatives)."""
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        rows = repo.story_passages(s, story)
        _refuse_while_streaming(rows)
        view = _view(s, story)
        candidates = [p for p in view.passages if p.versions > 1 and (passage_id is None or p.id == passage_id)]
        if not candidates:
            raise InvalidOptionsError("No alternatives yet: press Retry to get another version of the last continuation.")
        target = candidates[-1]
        row = next(p for p in rows if p.id == target.id)
        group = repo.passage_group(s, story, row.group_id)
        shown = group[(target.version - 1 + step) % len(group)]
        ids = [shown.id if p.id == target.id else p.id for p in rows]
        repo.record_edit(s, story, "alternative", ids)
        return _view(s, story)


# ------------------------------------------------------------------ continuing


def continue_story(
    ctx: AppContext,
    owner: str,
    story_id: str,
    settings: StorySettings,
    text: str = "",
    cancel: threading.Event | None = None,
    progress: Any = None,
) -> Iterator[StoryView]:
    """Add the writer's `text` (if any), then stream the model's continuation into the story."""
    if (text or "").strip():
        yield write(ctx, owner, story_id, text)
    yield from _generate(ctx, owner, story_id, settings, retry=False, cancel=cancel, progress=progress)


def retry(
    ctx: AppContext,
    owner: str,
    story_id: str,
    settings: StorySettings,
    cancel: threading.Event | None = None,
    progress: Any = None,
) -> Iterator[StoryView]:
    """Replace the last continuation with a new one; the old one stays as an alternative."""
    yield from _generate(ctx, owner, story_id, settings, retry=True, cancel=cancel, progress=progress)


def _generate(
    ctx: AppContext,
    owner: str,
    story_id: str,
    settings: StorySettings,
    *,
    retry: bool,
    cancel: threading.Event | None,
    progress: Any,
) -> Iterator[StoryView]:
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        rows = repo.story_passages(s, story)
        _refuse_while_streaming(rows)
        group_id = None
        if retry:
            if not rows or rows[-1].author != "model":
                raise InvalidOptionsError("The story does not end with a continuation to retry: press Continue.")
            group_id = rows[-1].group_id
            rows = rows[:-1]
        before_ids = [p.id for p in rows]
        texts = [p.text for p in rows]
        story.settings = {**story.settings, **settings.as_json()}

    # Build the context with the model's own tokenizer (loading the model if needed).
    gen = ctx.registry.load(settings.model, progress)
    if not isinstance(gen, TextGenerator):
        raise InvalidOptionsError(f"{settings.model!r} is not a text model; pick a language model.")
    count = ctx.token_counts.counter(settings.model, gen.count_tokens)
    instruct = gen.supports_chat()
    budget = gen.context_window - settings.params.max_new_tokens - reserved_tokens(instruct, count)
    assembled = assemble_context(texts, settings.levers, budget, count)
    request = to_request(assembled, instruct, settings.params)
    inspected = report(assembled, request, model=settings.model, context_window=gen.context_window).as_json()

    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        now = repo.story_passages(s, story)
        if [p.id for p in now][: len(before_ids)] != before_ids or len(now) > len(before_ids) + int(retry):
            raise InvalidOptionsError("The story changed while the context was being built; press the button again.")
        passage = repo.add_passage(s, story, "model", "", group_id=group_id, status="streaming", model=settings.model)
        edit = repo.record_edit(s, story, "retry" if retry else "continue", before_ids + [passage.id])
        story.settings = {**story.settings, "last_context": inspected}
        base = _view(s, story)
    prefix_of = (lambda t: joined("".join(texts), t)) if instruct else (lambda t: t)

    def attach(generation_id: str) -> None:
        with ctx.store.begin() as s:
            repo.get_passage(s, repo.get_session(s, owner, story_id, KIND), passage.id).generation_id = generation_id

    def save(text: str, status: str | None) -> None:
        with ctx.store.begin() as s:
            repo.set_passage_text(s, passage.id, prefix_of(text) if text else "", status)

    def with_passage(text: str, status: str, notice: str = "") -> StoryView:
        last = replace(base.passages[-1], text=prefix_of(text) if text else "", status=status)
        return replace(base, passages=base.passages[:-1] + (last,), notice=notice)

    def forget_if_empty(text: str) -> bool:
        """A continuation that produced nothing leaves the story as it was."""
        if text:
            return False
        with ctx.store.begin() as s:
            repo.drop_last_edit(s, repo.get_session(s, owner, story_id, KIND), edit.id)
        return True

    yield base
    result_text = ""
    try:
        for _delta, result in stream_text(
            ctx, owner, settings.model, request, cancel=cancel, session_id=story_id, on_start=attach, save=save, progress=progress
        ):
            result_text = result.text
            if result.outcome == "running":
                yield with_passage(result.text, "streaming")
                continue
            inspected["prompt_tokens"] = result.prompt_tokens
            with ctx.store.begin() as s:
                story = repo.get_session(s, owner, story_id, KIND)
                story.settings = {**story.settings, "last_context": inspected}
            if forget_if_empty(result.text):
                with ctx.store.begin() as s:
                    yield _view(s, repo.get_session(s, owner, story_id, KIND), "The model wrote nothing; the story is unchanged.")
                return
            notice = _notice(result.outcome, result.completion_tokens, assembled.cut)
            yield with_passage(result.text, result.outcome, notice)
    except Exception:
        forget_if_empty(result_text)
        raise


def _notice(outcome: str, tokens: int, cut: Sequence[Any]) -> str:
    parts = []
    if outcome == "cancelled":
        parts.append(f"Stopped after {tokens} tokens; what was written is kept.")
    if cut:
        chars = sum(c.chars for c in cut)
        parts.append(f"{chars:,} characters were left out to fit the context window (see the context inspector).")
    return " ".join(parts)


# ------------------------------------------------------------------ managing


def rename_story(ctx: AppContext, owner: str, story_id: str, title: str) -> StoryView:
    if not (title or "").strip():
        raise InvalidOptionsError("A story title cannot be empty.")
    with ctx.store.begin() as s:
        _get(s, owner, story_id)
        return _view(s, repo.rename_session(s, owner, story_id, title))


def delete_story(ctx: AppContext, owner: str, story_id: str) -> None:
    with ctx.store.begin() as s:
        _get(s, owner, story_id)
        repo.delete_session(s, owner, story_id)


def duplicate_story(ctx: AppContext, owner: str, story_id: str, title: str = "") -> StoryView:
    """A fork: a new story with the same settings and text, to try another direction."""
    with ctx.store.begin() as s:
        src = _get(s, owner, story_id)
        rows = repo.story_passages(s, src)
        settings = {k: v for k, v in src.settings.items() if k != "last_context"}
        new = repo.create_session(s, owner, KIND, (title.strip() or f"{src.title} (fork)")[:200], settings)
        ids = [repo.add_passage(s, new, p.author, p.text, model=p.model).id for p in rows if p.text]
        repo.record_edit(s, new, "create", ids)
        return _view(s, new, f"Forked from “{src.title}”.")


def save_snapshot(ctx: AppContext, owner: str, story_id: str, name: str) -> list[SnapshotSummary]:
    name = (name or "").strip()
    if not name:
        raise InvalidOptionsError("Give the snapshot a name.")
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        rows = repo.story_passages(s, story)
        _refuse_while_streaming(rows)
        repo.add_snapshot(s, story, name, [{"author": p.author, "text": p.text} for p in rows if p.text])
        return _snapshots(s, story)


def list_snapshots(ctx: AppContext, owner: str, story_id: str) -> list[SnapshotSummary]:
    with ctx.store.begin() as s:
        return _snapshots(s, _get(s, owner, story_id))


def _snapshots(s: Any, story: Any) -> list[SnapshotSummary]:
    return [
        SnapshotSummary(r.id, r.name, r.created_at, sum(len(p["text"]) for p in r.passages)) for r in repo.snapshots_of(s, story)
    ]


def restore_snapshot(ctx: AppContext, owner: str, story_id: str, snapshot_id: str) -> StoryView:
    """Return to a named version (an edit like any other: Undo goes back to before it)."""
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        _refuse_while_streaming(repo.story_passages(s, story))
        snap = repo.get_snapshot(s, story, snapshot_id)
        ids = [repo.add_passage(s, story, p["author"], p["text"]).id for p in snap.passages]
        repo.record_edit(s, story, "restore", ids)
        return _view(s, story, f"Restored “{snap.name}” (Undo goes back).")


# ------------------------------------------------------------------ export / import


def export_json(ctx: AppContext, owner: str, story_id: str) -> dict[str, Any]:
    """The story as it stands, its settings and its snapshots (alternatives are not exported)."""
    with ctx.store.begin() as s:
        story = _get(s, owner, story_id)
        return {
            "format": EXPORT_FORMAT,
            "title": story.title,
            "settings": {k: v for k, v in story.settings.items() if k != "last_context"},
            "created_at": story.created_at.isoformat(),
            "passages": [
                {"author": p.author, "text": p.text, "status": p.status, "model": p.model} for p in repo.story_passages(s, story)
            ],
            "snapshots": [
                {"name": r.name, "created_at": r.created_at.isoformat(), "passages": r.passages}
                for r in reversed(repo.snapshots_of(s, story))
            ],
        }


def export_text(ctx: AppContext, owner: str, story_id: str) -> str:
    view = get_story(ctx, owner, story_id)
    return view.text.strip() + "\n"


def export_markdown(ctx: AppContext, owner: str, story_id: str) -> str:
    view = get_story(ctx, owner, story_id)
    lines = [f"# {view.title or 'Untitled story'}", ""]
    premise = view.settings.get("premise")
    if premise:
        lines += [f"*{premise}*", ""]
    lines.append(view.text.strip())
    return "\n".join(lines) + "\n"


def import_json(ctx: AppContext, owner: str, raw: bytes | str | dict[str, Any]) -> StoryView:
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidOptionsError(f"That file is not valid JSON ({exc}). Pick a story exported as JSON.") from None
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InvalidOptionsError(f'This is not an AIGC Studio story export (expected "format": "{EXPORT_FORMAT}").')
    passages = data.get("passages")
    if not isinstance(passages, list) or not all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in passages):
        raise InvalidOptionsError("The export has no valid list of passages.")
    snapshots = data.get("snapshots") or []
    try:
        with ctx.store.begin() as s:
            title = str(data.get("title") or "Imported story")[:200]
            story = repo.create_session(s, owner, KIND, title, data.get("settings") or {})
            ids = [
                repo.add_passage(
                    s, story, "model" if p.get("author") == "model" else "user", p["text"], model=p.get("model")
                ).id
                for p in passages
            ]
            repo.record_edit(s, story, "import", ids)
            for snap in snapshots:
                texts = [
                    {"author": "model" if p.get("author") == "model" else "user", "text": str(p.get("text", ""))}
                    for p in snap.get("passages") or []
                ]
                repo.add_snapshot(s, story, str(snap.get("name") or "snapshot"), texts)
            return _view(s, story, "Imported.")
    except StorageError as exc:
        raise InvalidOptionsError(str(exc)) from None
