"""The shapes of a story: its settings, a UI-ready view of it, and the helpers every story
use case shares (load a story row, build its view, refuse while the model is writing).

No Gradio here; the use cases live in story.py (writing, continuing) and story_archive.py
(snapshots, fork, export/import).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from generators.base import InvalidOptionsError, SamplingParams
from storage import repository as repo

from . import instruct
from .context import AppContext, check_text
from .generation import sampling_params
from .story_context import Levers, WorldEntry

KIND = "story"
MAX_PASSAGE_CHARS = 100_000
MAX_LEVER_CHARS = 50_000
STATUS_NOTE = {"cancelled": "stopped", "error": "failed", "interrupted": "interrupted", "streaming": "writing…"}


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class StorySettings:
    """How continuations are made; stored on the story so it is remembered."""

    model: str
    params: SamplingParams
    levers: Levers = field(default_factory=Levers)
    template: str = ""  # the instruct template's name ("" = the model's own)

    def as_json(self) -> dict[str, Any]:
        lv = self.levers
        return {
            "model": self.model,
            "template": self.template,
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
    template: str | None = "",
    owner: str | None = None,
) -> StorySettings:
    """Validate a continuation's settings (raises InvalidOptionsError with a readable message); with
    `owner`, also that the instruct template is one of theirs or a built-in."""
    name = model or ctx.default_model
    # UnknownGeneratorError with the list of models (someone else's own model is unknown to `owner`)
    ctx.registry.get(name) if owner is None else ctx.registry.get_visible(name, owner)
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
    check_text(template or "", "template name")
    chosen = (template or "").strip()[:100]
    if owner is not None:
        found = instruct.get_template(ctx, owner, chosen)
        chosen = "" if found.source is None else found.name
    return StorySettings(name, sampling_params(params, ctx), levers, chosen)


def settings_from_json(ctx: AppContext, data: dict[str, Any], owner: str | None = None) -> StorySettings:
    """The settings stored on a story (lenient: unknown models fall back to the default); `owner`'s own
    models (finished training jobs) are kept."""
    model = data.get("model") if data.get("model") in ctx.registry.names("text", owner=owner) else ctx.default_model
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
        template=data.get("template") if isinstance(data.get("template"), str) else "",
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
    loading: str = ""  # while the model loads before a continuation: what it is doing and for how long
    undo_action: str = ""  # what Undo would take back ("continue", "alternative", …), "" when nothing
    redo_action: str = ""

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


def view_of(s: Any, story: Any, notice: str = "") -> StoryView:
    rows = repo.story_passages(s, story)
    groups = repo.group_sizes(s, story, [p.group_id for p in rows])
    passages = tuple(
        ViewPassage(p.id, p.author, p.text, p.status, groups[p.group_id].index(p.id) + 1, len(groups[p.group_id]), p.model)
        for p in rows
    )
    back, forward = repo.neighbour_edits(s, story)
    return StoryView(
        story.id, story.title, passages, dict(story.settings), back is not None, forward is not None, notice,
        undo_action=back.action if back is not None else "", redo_action=forward.action if forward is not None else "",
    )


def story_row(s: Any, owner: str, story_id: str | None) -> Any:
    if not story_id:
        raise InvalidOptionsError("Open or create a story first.")
    return repo.get_session(s, owner, story_id, KIND)


def refuse_while_streaming(rows: Sequence[Any]) -> None:
    if rows and rows[-1].status == "streaming":
        raise InvalidOptionsError("The model is still writing: wait for it to finish or press Stop.")


def clean_passage(text: str) -> str:
    check_text(text, "text")
    if len(text) > MAX_PASSAGE_CHARS:
        raise InvalidOptionsError(f"The text is {len(text):,} characters long; the limit is {MAX_PASSAGE_CHARS:,}.")
    return text
