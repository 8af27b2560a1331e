"""Story use cases: write, continue, retry, undo/redo, edit, alternatives, list, rename, delete.

A story is a `sessions` row (kind="story") whose settings hold the model, sampler, premise,
memory, author's note, world info and the last context sent. Its text is an ordered list of
passages; every change is an edit in an undo log (see storage/models.py), so undo/redo
survive a restart and nothing written is ever overwritten.

The values (settings, views) live in story_values.py; snapshots, fork and export/import in
story_archive.py. Both are re-exported here so callers need one import: `services.story`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from generators.base import CAP_CONTINUE_TURN, InvalidOptionsError, TextGenerator
from storage import repository as repo

from . import instruct as instruct_templates
from .context import AppContext, clean_title
from .generation import stream_text
from .loading import wait_until_loaded
from .story_archive import (  # noqa: F401 (re-exported)
    EXPORT_FORMAT,
    delete_snapshot,
    duplicate_story,
    export_json,
    export_markdown,
    export_text,
    import_json,
    list_snapshots,
    rename_snapshot,
    restore_snapshot,
    save_snapshot,
)
from .story_context import assemble_context, report, reserved_tokens, to_request
from .story_values import (  # noqa: F401 (re-exported)
    EMPTY,
    KIND,
    STATUS_NOTE,
    SnapshotSummary,
    StorySettings,
    StorySummary,
    StoryView,
    ViewPassage,
    clean_passage,
    parse_world_info,
    refuse_while_streaming,
    settings_from_json,
    story_row,
    story_settings,
    view_of,
)

# What each entry of the undo log is called on the page (Undo and Redo name what they will do).
ACTION_NAMES = {
    "create": "the opening",
    "write": "your text",
    "continue": "the continuation",
    "retry": "the retry",
    "alternative": "the switch to another version (◀ ▶)",
    "edit": "the passage edit",
    "restore": "the return to a snapshot",
}

NO_SPACE_BEFORE = ".,;:!?)]}'\"’”…-"


def joined(before: str, text: str) -> str:
    """`text` with a space in front when it would otherwise glue onto the previous word."""
    if before and text and not before[-1].isspace() and not text[0].isspace() and text[0] not in NO_SPACE_BEFORE:
        return " " + text
    return text


# ------------------------------------------------------------------ reading


def get_story(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    with ctx.store.begin() as s:
        return view_of(s, story_row(s, owner, story_id))


def list_stories(ctx: AppContext, owner: str, query: str = "") -> list[StorySummary]:
    query = clean_title(query, "search")
    with ctx.store.begin() as s:
        return [StorySummary(c.id, c.title or "Untitled story", c.updated_at) for c in repo.list_sessions(s, owner, KIND, query)]


# ------------------------------------------------------------------ creating and writing


def create_story(ctx: AppContext, owner: str, title: str, settings: StorySettings, opening: str = "") -> StoryView:
    """A new story (its first edit is the empty or opening text, so undo stops there)."""
    opening = clean_passage(opening or "")
    with ctx.store.begin() as s:
        story = repo.create_session(s, owner, KIND, clean_title(title) or "Untitled story", settings.as_json())
        ids = [repo.add_passage(s, story, "user", opening).id] if opening.strip() else []
        repo.record_edit(s, story, "create", ids)
        return view_of(s, story, "Story created.")


def save_settings(ctx: AppContext, owner: str, story_id: str, settings: StorySettings) -> StoryView:
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        story.settings = {**story.settings, **settings.as_json()}
        return view_of(s, story)


def write(ctx: AppContext, owner: str, story_id: str, text: str) -> StoryView:
    """Append the writer's own text as a passage."""
    text = clean_passage(text or "")
    if not text.strip():
        raise InvalidOptionsError("Type some text to add first.")
    ctx.check_text(text, "passage")
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        rows = repo.story_passages(s, story)
        refuse_while_streaming(rows)
        passage = repo.add_passage(s, story, "user", joined("".join(p.text for p in rows), text))
        repo.record_edit(s, story, "write", [p.id for p in rows] + [passage.id])
        return view_of(s, story)


def edit_passage(ctx: AppContext, owner: str, story_id: str, passage_id: str, text: str) -> StoryView:
    """Replace a passage's text by hand (a new version; undo brings the old one back)."""
    text = clean_passage(text or "")
    ctx.check_text(text, "passage")
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        rows = repo.story_passages(s, story)
        refuse_while_streaming(rows)
        ids = [p.id for p in rows]
        if passage_id not in ids:
            raise InvalidOptionsError("That passage is not part of the story as it stands now.")
        old = rows[ids.index(passage_id)]
        if old.text == text:
            return view_of(s, story, "Nothing changed.")
        if text.strip():
            new = repo.add_passage(s, story, old.author, text, model=old.model)
            ids[ids.index(passage_id)] = new.id
            notice = "Passage edited (Undo brings the old text back)."
        else:
            ids.remove(passage_id)
            notice = "Passage removed (Undo brings it back)."
        repo.record_edit(s, story, "edit", ids)
        return view_of(s, story, notice)


def undo(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    return _step(ctx, owner, story_id, -1)


def redo(ctx: AppContext, owner: str, story_id: str) -> StoryView:
    return _step(ctx, owner, story_id, +1)


def _step(ctx: AppContext, owner: str, story_id: str, step: int) -> StoryView:
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        refuse_while_streaming(repo.story_passages(s, story))
        before = repo.current_edit(s, story)
        target = repo.step_edit(s, story, step)
        if target is None or before is None:
            raise InvalidOptionsError("Nothing to undo." if step < 0 else "Nothing to redo.")
        what = ACTION_NAMES.get(before.action if step < 0 else target.action, "the last change")
        view = view_of(s, story)
        # Undo walks back through every step, ◀ ▶ flips included: say what it did and what comes next.
        nxt = ACTION_NAMES.get(view.undo_action, "the last change")
        done = f"↶ Undid {what}." if step < 0 else f"↷ Redid {what}."
        return replace(view, notice=f"{done} Undo again: {nxt}." if view.can_undo else f"{done} Nothing more to undo.")


def switch_alternative(ctx: AppContext, owner: str, story_id: str, step: int, passage_id: str | None = None) -> StoryView:
    """Show another version of a passage (by default the newest one that has alternatives)."""
    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        rows = repo.story_passages(s, story)
        refuse_while_streaming(rows)
        view = view_of(s, story)
        candidates = [p for p in view.passages if p.versions > 1 and (passage_id is None or p.id == passage_id)]
        if not candidates:
            raise InvalidOptionsError("No alternatives yet: press Retry to get another version of the last continuation.")
        target = candidates[-1]
        row = next(p for p in rows if p.id == target.id)
        group = repo.passage_group(s, story, row.group_id)
        shown = group[(target.version - 1 + step) % len(group)]
        ids = [shown.id if p.id == target.id else p.id for p in rows]
        repo.record_edit(s, story, "alternative", ids)
        return view_of(s, story)


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
        story = story_row(s, owner, story_id)
        rows = repo.story_passages(s, story)
        refuse_while_streaming(rows)
        group_id = None
        if retry:
            if not rows or rows[-1].author != "model":
                raise InvalidOptionsError("The story does not end with a continuation to retry: press Continue.")
            group_id = rows[-1].group_id
            rows = rows[:-1]
        before_ids = [p.id for p in rows]
        texts = [p.text for p in rows]
        story.settings = {**story.settings, **settings.as_json()}

    # Build the context with the model's own tokenizer (loading the model first, saying how it goes).
    waiting: StoryView | None = None
    for step in wait_until_loaded(ctx, settings.model):
        if waiting is None:
            with ctx.store.begin() as s:
                waiting = view_of(s, story_row(s, owner, story_id))
        yield replace(waiting, loading=step.text)
    gen = ctx.registry.load(settings.model, progress)  # loaded by now: this only marks it recently used
    if not isinstance(gen, TextGenerator):
        raise InvalidOptionsError(f"{settings.model!r} is not a text model; pick a language model.")
    count = ctx.token_counts.counter(settings.model, gen.count_tokens)
    instruct = gen.supports_chat()
    budget = gen.context_window - settings.params.max_new_tokens - reserved_tokens(instruct, count)
    assembled = assemble_context(texts, settings.levers, budget, count)
    request = to_request(assembled, instruct, settings.params, continue_turn=CAP_CONTINUE_TURN in gen.info.capabilities)
    if instruct:  # the story's instruct template (the model's own unless one is chosen), its stops added
        source, params = instruct_templates.apply(
            ctx, settings.model, instruct_templates.get_template(ctx, owner, settings.template), settings.params)
        request = replace(request, template=source, params=params)
    inspected = report(assembled, request, model=settings.model, context_window=gen.context_window).as_json()
    rendered = gen.render_prompt(request)  # the text after the model's template, as the model reads it
    inspected.update(rendered=rendered.text, rendered_tokens=rendered.tokens)

    with ctx.store.begin() as s:
        story = story_row(s, owner, story_id)
        now = repo.story_passages(s, story)
        if [p.id for p in now][: len(before_ids)] != before_ids or len(now) > len(before_ids) + int(retry):
            raise InvalidOptionsError("The story changed while the context was being built; press the button again.")
        passage = repo.add_passage(s, story, "model", "", group_id=group_id, status="streaming", model=settings.model)
        edit = repo.record_edit(s, story, "retry" if retry else "continue", before_ids + [passage.id])
        story.settings = {**story.settings, "last_context": inspected}
        base = view_of(s, story)
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
                    story = repo.get_session(s, owner, story_id, KIND)
                    yield view_of(s, story, "The model wrote nothing; the story is unchanged.")
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
    title = clean_title(title)
    if not title:
        raise InvalidOptionsError("A story title cannot be empty.")
    with ctx.store.begin() as s:
        story_row(s, owner, story_id)
        return view_of(s, repo.rename_session(s, owner, story_id, title))


def delete_story(ctx: AppContext, owner: str, story_id: str) -> None:
    with ctx.store.begin() as s:
        story_row(s, owner, story_id)
        repo.delete_session(s, owner, story_id)
