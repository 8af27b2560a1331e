"""The Story workspace: a document written together with the model, with memory, author's
note, world info, undo/redo, alternatives and a context inspector.

Layout first, listeners at the bottom. Every click lands in `webui.services.story` within
two hops; the sidebar (list, snapshots, export) lives in story_sidebar.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gradio as gr

from generators.text.instruct import FORMATS

from ..errors import ui_errors
from ..services import ratings, workspace_defaults
from ..services import story as svc
from ..services.context import AppContext
from ..services.instruct import MODEL_OWN, template_names
from ..services.story_context import MAX_DEPTH
from . import FAST, prompt_picker, story_sidebar
from . import presets as presets_ui
from .sampler import build_sampler
from .story_view import LEGEND, alternatives_label, inspector_markdown, passage_choices, sent_text, story_html

STREAM_EVERY_S = 0.08  # the whole document is re-sent on each update: a few per second is plenty


def build(ctx: AppContext) -> Callable[[gr.Blocks], None]:
    """Lay out the Story tab inside the current Blocks and wire its events."""
    text_models = ctx.registry.names("text")
    story_id = gr.State(None)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=240):
            side = story_sidebar.build_layout()
        with gr.Column(scale=4):
            with gr.Row():
                title = gr.Textbox(label="Title", placeholder="Untitled story", scale=2, elem_id="story-title-input")
                premise = gr.Textbox(label="Premise / genre", placeholder="e.g. a cosy mystery in 1920s Lisbon", scale=4)
                model = gr.Dropdown(text_models, value=ctx.default_model, label="Model", scale=2, elem_id="story-model")
            gr.HTML(LEGEND, elem_id="story-legend")
            document = gr.HTML(story_html(svc.EMPTY), elem_id="story-document")
            notice = gr.Markdown(elem_id="story-notice")
            your_text = gr.Textbox(
                show_label=False, lines=2, max_lines=10, elem_id="story-input",
                placeholder="Your text (optional): it is added to the story, then the model continues.",
            )  # fmt: skip
            prompt_picker.build(ctx, your_text, "story")
            with gr.Row():
                cont = gr.Button("Continue", variant="primary", scale=2, elem_id="story-continue")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="story-stop")
                retry = gr.Button("↻ Retry", scale=1, elem_id="story-retry")
                undo = gr.Button("↶ Undo", scale=1, elem_id="story-undo")
                redo = gr.Button("↷ Redo", scale=1, elem_id="story-redo")
            with gr.Row():
                prev_alt = gr.Button("◀", size="sm", min_width=40, scale=0, elem_id="story-prev")
                next_alt = gr.Button("▶", size="sm", min_width=40, scale=0, elem_id="story-next")
                alt_label = gr.Markdown("", elem_id="story-alternatives")
            with gr.Accordion("Edit a passage", open=False):
                passage = gr.Dropdown([], label="Passage", elem_id="story-passage")
                passage_text = gr.Textbox(label="Text", lines=4, max_lines=20, info="empty removes the passage")
                with gr.Row():
                    save_edit = gr.Button("Save edit", size="sm")
                    rate_up = gr.Button("Rate: good", size="sm", elem_id="story-rate-up")
                    rate_down = gr.Button("Rate: bad", size="sm", elem_id="story-rate-down")
            with gr.Accordion("Memory, author's note, world info", open=False):
                memory = gr.Textbox(label="Memory", lines=3, info="always at the top of the context: characters, setting")
                with gr.Row():
                    authors_note = gr.Textbox(label="Author's note", scale=4, info="a short instruction near the end")
                    an_depth = gr.Slider(0, MAX_DEPTH, value=3, step=1, label="Depth", scale=2,
                                         info="paragraphs before the end (0 = at the end)")  # fmt: skip
                world_info = gr.Dataframe(
                    headers=["Keywords (comma-separated)", "Entry"], datatype=["str", "str"], column_count=2, row_count=1,
                    label="World info: an entry joins the context when a keyword is in the recent text",
                    interactive=True, elem_id="story-world-info",
                )  # fmt: skip
                scan_depth = gr.Slider(1, MAX_DEPTH, value=10, step=1, label="Scan depth", info="recent paragraphs searched")
            sampler = build_sampler(workspace_defaults.STORY, presets="story")
            with gr.Accordion("Context inspector: what was sent to the model last time", open=False):
                template = gr.Dropdown([MODEL_OWN, *FORMATS], value=MODEL_OWN, allow_custom_value=True,
                                       label="Instruct template (instruct models)", elem_id="story-template",
                                       info="the model's own by default; your own templates are made in Chat")
                inspector = gr.Markdown(inspector_markdown(None), elem_id="story-inspector")
                sent = gr.Textbox(label="Exactly as sent", lines=8, max_lines=30, interactive=False)

    settings_fields = [model, premise, memory, authors_note, an_depth, world_info, scan_depth, *sampler.components,
                       template]

    # ------------------------------------------------------------ handlers
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def settings_from(values: dict[Any, Any], request: gr.Request) -> svc.StorySettings:
        params = sampler.params(values)
        table = values[world_info]
        rows = table.values.tolist() if hasattr(table, "values") else (table or {}).get("data", table) or []
        return svc.story_settings(
            ctx, values[model], params, premise=values[premise] or "", memory=values[memory] or "",
            authors_note=values[authors_note] or "", an_depth=values[an_depth], world_info=rows,
            scan_depth=values[scan_depth], template=values[template], owner=owner(request),
        )  # fmt: skip

    def render(view: svc.StoryView, keep_passage: str | None = None) -> dict[Any, Any]:
        choices = passage_choices(view)
        pick = keep_passage if any(c[1] == keep_passage for c in choices) else (choices[-1][1] if choices else None)
        return {
            document: story_html(view),
            story_id: view.id or None,
            notice: view.notice,
            alt_label: alternatives_label(view),
            passage: gr.Dropdown(choices=choices, value=pick),
            inspector: inspector_markdown(view.last_context),
            sent: sent_text(view.last_context),
        }

    def render_with_settings(view: svc.StoryView, who: str | None = None) -> dict[Any, Any]:
        """An opened story brings back its own title and settings (`who`'s own model too)."""
        out = {**render(view), title: view.title, passage_text: _passage_text(view, None)}
        if not view.settings.get("model"):
            return out
        st = svc.settings_from_json(ctx, view.settings, who).as_json()
        p = st["params"]
        values = [st["model"], st["premise"], st["memory"], st["authors_note"], st["an_depth"],
                  [[", ".join(e["keys"]), e["text"]] for e in st["world_info"]] or [["", ""]], st["scan_depth"],
                  *sampler.values_of(p), st["template"] or MODEL_OWN]  # fmt: skip
        return {**out, **dict(zip(settings_fields, values, strict=True))}

    def _passage_text(view: svc.StoryView, pid: str | None) -> str:
        match = [p for p in view.passages if p.id == pid] or list(view.passages[-1:])
        return match[0].text if match else ""

    def new_story(values: dict[Any, Any], request: gr.Request) -> svc.StoryView:
        view = svc.create_story(ctx, owner(request), values[title] or "", settings_from(values, request), values[your_text] or "")
        ctx.cancels.fresh(request.session_hash or "")
        return view

    @ui_errors
    def prepare_continue(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        """Save the settings and the writer's text (a new story if none is open); then stream."""
        settings, text, sid = settings_from(values, request), values[your_text] or "", values[story_id]
        if not sid:
            if not text.strip():
                raise gr.Error("The story is empty: write its opening lines first, then press Continue.")
            name = values[title] or " ".join(text.split())[:60]
            view = svc.create_story(ctx, owner(request), name, settings, text)
        else:
            svc.save_settings(ctx, owner(request), sid, settings)
            view = svc.write(ctx, owner(request), sid, text) if text.strip() else svc.get_story(ctx, owner(request), sid)
        ctx.cancels.fresh(request.session_hash or "")
        return {**render(view), your_text: "", title: view.title}

    @ui_errors
    def prepare_retry(values: dict[Any, Any], request: gr.Request) -> None:
        if not values[story_id]:
            raise gr.Error("Open or create a story first.")
        svc.save_settings(ctx, owner(request), values[story_id], settings_from(values, request))
        ctx.cancels.fresh(request.session_hash or "")

    def streamer(kind: str) -> Callable[..., Any]:
        @ui_errors
        def stream(sid: str | None, request: gr.Request) -> Any:
            if not sid:
                raise gr.Error("Open or create a story first.")
            who, cancel = owner(request), ctx.cancels.current(request.session_hash or "")
            settings = svc.settings_from_json(ctx, svc.get_story(ctx, who, sid).settings, who)
            run = svc.continue_story if kind == "continue" else svc.retry
            last_sent, pending = 0.0, None
            for view in run(ctx, who, sid, settings, cancel=cancel):
                pending = view
                if view.passages and view.passages[-1].status == "streaming" and time.monotonic() - last_sent < STREAM_EVERY_S:
                    continue
                last_sent, pending = time.monotonic(), None
                yield render(view)
            if pending is not None:
                yield render(pending)

        return stream

    def step(fn: Callable[..., svc.StoryView]) -> Callable[..., Any]:
        @ui_errors
        def handler(sid: str | None, request: gr.Request) -> dict[Any, Any]:
            view = fn(ctx, owner(request), sid or "")
            return {**render(view), passage_text: _passage_text(view, None)}

        return handler

    def flip(direction: int) -> Callable[..., Any]:
        return step(lambda c, o, sid: svc.switch_alternative(c, o, sid, direction))

    @ui_errors
    def pick_passage(sid: str | None, pid: str | None, request: gr.Request) -> str:
        return _passage_text(svc.get_story(ctx, owner(request), sid), pid) if sid else ""

    @ui_errors
    def edit(sid: str | None, pid: str | None, text: str, request: gr.Request) -> dict[Any, Any]:
        if not sid or not pid:
            raise gr.Error("Pick a passage of an open story to edit.")
        return render(svc.edit_passage(ctx, owner(request), sid, pid, text or ""))

    def stop_generation(request: gr.Request) -> None:
        ctx.cancels.cancel(request.session_hash or "")

    @ui_errors
    def save_levers(values: dict[Any, Any], request: gr.Request) -> str:
        """Memory, author's note and world info are saved when you leave the field, and say so."""
        if not values[story_id]:
            return "Memory, author's note and world info are kept with the story once you press Continue."
        svc.save_settings(ctx, owner(request), values[story_id], settings_from(values, request))
        return "✓ Saved — memory, author's note and world info apply from the next Continue."

    # ------------------------------------------------------------ wiring
    view_outputs = [document, story_id, notice, alt_label, passage, inspector, sent]
    full_outputs = view_outputs + [title, passage_text, *settings_fields]
    generate = {"concurrency_id": "generate", "concurrency_limit": ctx.settings.generation_slots()}
    private = {"api_visibility": "private"}
    inputs = {story_id, title, your_text, *settings_fields}
    refresh_list = story_sidebar.wire(ctx, side, story_id, title, render_with_settings, full_outputs, new_story, inputs)

    def after(query: str, sid: str | None, request: gr.Request) -> Any:
        return refresh_list(query, sid, request)

    cont.click(prepare_continue, inputs, view_outputs + [your_text, title], **FAST, api_name="write").success(
        streamer("continue"), story_id, view_outputs, **generate, api_name="continue"
    ).then(after, [side.search, story_id], side.stories, **FAST, **private)
    retry.click(prepare_retry, inputs, None, **FAST, **private).success(
        streamer("retry"), story_id, view_outputs, **generate, api_name="retry"
    ).then(after, [side.search, story_id], side.stories, **FAST, **private)
    stop.click(stop_generation, None, None, **FAST, api_name="story_stop")
    # A new story is listed as soon as its opening is saved, not when the first continuation is done.
    story_id.change(after, [side.search, story_id], side.stories, **FAST, **private)
    for lever in (memory.blur, authors_note.blur, world_info.input):
        lever(save_levers, inputs, notice, **FAST, **private)
    undo.click(step(svc.undo), story_id, view_outputs + [passage_text], **FAST, api_name="undo")
    redo.click(step(svc.redo), story_id, view_outputs + [passage_text], **FAST, api_name="redo")
    prev_alt.click(flip(-1), story_id, view_outputs + [passage_text], **FAST, api_name="story_previous_version")
    next_alt.click(flip(+1), story_id, view_outputs + [passage_text], **FAST, api_name="story_next_version")
    passage.select(pick_passage, [story_id, passage], passage_text, **FAST, **private)
    save_edit.click(edit, [story_id, passage, passage_text], view_outputs, **FAST, api_name="edit_passage")

    def rater(value: int) -> Any:
        @ui_errors
        def handler(pid: str | None, request: gr.Request) -> None:
            if not pid:
                raise gr.Error("Pick a passage the model wrote first (Edit a passage → Passage).")
            ratings.rate(ctx, owner(request), "passage", pid, value)
            gr.Info("Rated — thanks." if value > 0 else "Rated — thanks; the Evaluate tab lists ratings per model.")

        return handler

    rate_up.click(rater(1), passage, None, **FAST, **private)
    rate_down.click(rater(-1), passage, None, **FAST, **private)
    assert sampler.presets is not None
    load_presets = presets_ui.wire(ctx, sampler.presets, sampler.components, sampler.values_of, sampler.params, model,
                                   "story")

    def list_templates(current: str | None, request: gr.Request) -> Any:
        return gr.Dropdown(choices=template_names(ctx, owner(request)), value=current or MODEL_OWN)

    template.focus(list_templates, template, template, **FAST, **private)

    def on_page_load(demo: gr.Blocks) -> None:
        demo.load(after, [side.search, story_id], side.stories, **FAST, **private)
        load_presets(demo)

    return on_page_load
