"""The Gallery: every saved image of the user, newest first; filter, page, open, re-run, delete."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import images as svc
from ..services import ratings
from ..services.context import AppContext
from . import FAST
from .image import served

ALL = "all"
PAGE_SIZE = 24


def build(ctx: AppContext) -> Any:
    """Lay out the Gallery tab; returns the refresh function's wiring for when the tab is shown."""
    models = svc.image_models(ctx)
    max_classes = max((len(svc.class_choices(ctx, m)) for m in models), default=10)
    page_ids = gr.State([])
    with gr.Row():
        model = gr.Dropdown([ALL] + models, value=ALL, label="Generator", scale=2, elem_id="gallery-model")
        label = gr.Dropdown([ALL] + [str(i) for i in range(max_classes)], value=ALL, label="Class number", scale=1,
                            elem_id="gallery-class")
        prev_page = gr.Button("◀ Newer", scale=0, min_width=90, elem_id="gallery-prev")
        page = gr.Number(1, precision=0, minimum=1, label="Page", scale=0, min_width=90, elem_id="gallery-page")
        next_page = gr.Button("Older ▶", scale=0, min_width=90, elem_id="gallery-next")
        refresh = gr.Button("Refresh", scale=0, min_width=90, elem_id="gallery-refresh")
    summary = gr.Markdown(elem_id="gallery-summary")
    with gr.Row(equal_height=False):
        grid = gr.Gallery(label="Your images", columns=6, height=480, allow_preview=False, object_fit="contain",
                          elem_id="gallery-grid", scale=3)
        with gr.Column(scale=2):
            image_id = gr.Textbox(label="Image id", elem_id="gallery-image-id", max_lines=1,
                                  placeholder="click an image, or paste an id")
            preview = gr.Image(label="Selected", type="filepath", height=220, elem_id="gallery-preview")
            made_by = gr.Markdown(elem_id="gallery-made-by")
            details = gr.JSON(label="Parameters", elem_id="gallery-details")
            with gr.Row():
                rerun = gr.Button("Re-run", variant="primary", size="sm", elem_id="gallery-rerun")
                rate_up = gr.Button("Rate: good", size="sm", elem_id="gallery-rate-up")
                rate_down = gr.Button("Rate: bad", size="sm", elem_id="gallery-rate-down")
                delete = gr.Button("Delete", variant="stop", size="sm", elem_id="gallery-delete")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Delete for good", variant="stop", size="sm", elem_id="gallery-delete-confirm")
                cancel = gr.Button("Keep it", size="sm")
            notice = gr.Markdown(elem_id="gallery-notice")

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def show_page(name: str, cls: str, number: float | None, request: gr.Request) -> tuple[Any, ...]:
        result = svc.gallery(ctx, owner(request), None if name == ALL else name, None if cls == ALL else cls,
                             int(number or 1), PAGE_SIZE)
        items = [(served(i.path), i.caption) for i in result.images]
        text = (f"{result.total} image(s) · page {result.page} of {result.pages}" if result.total
                else "No images yet: make some in the Image tab.")
        return items, [i.id for i in result.images], result.page, text

    def step(delta: int) -> Any:
        def handler(name: str, cls: str, number: float | None, request: gr.Request) -> tuple[Any, ...]:
            return show_page(name, cls, max(1, int(number or 1) + delta), request)

        return handler

    @ui_errors
    def open_image(chosen: str, request: gr.Request) -> tuple[Any, ...]:
        chosen = (chosen or "").strip()
        if not chosen:
            return None, None, gr.update()
        item = svc.get_image(ctx, owner(request), chosen)
        made = str(item.created_at)[:16].replace("T", " ")
        return served(item.gif_path or item.path), item.public(), f"Made {made} by **{item.model}**."

    def select(ids: list[str], evt: gr.SelectData) -> str:
        return ids[evt.index] if isinstance(evt.index, int) and 0 <= evt.index < len(ids) else ""

    @ui_errors
    def do_rerun(chosen: str, request: gr.Request) -> tuple[Any, ...]:
        if not chosen:
            raise gr.Error("Pick an image first.")
        original = svc.get_image(ctx, owner(request), chosen)
        result = svc.rerun(ctx, owner(request), chosen)
        made = result.images[0]
        same = svc.compare(original.path, made).sentence()
        note = (f"Re-run done: the new PNG is {same}. It is saved as a new image (selected now); "
                "the original stays in the gallery too — delete either one if you want a single copy.")
        return made.id, served(made.gif_path or made.path), made.public(), " ".join(x for x in (note, result.notice) if x)

    @ui_errors
    def do_delete(chosen: str, request: gr.Request) -> tuple[Any, ...]:
        if not chosen:
            raise gr.Error("Pick an image first.")
        svc.delete_image(ctx, owner(request), chosen)
        return "", None, None, "Deleted.", gr.Row(visible=False)

    def first_page(name: str, cls: str, request: gr.Request) -> tuple[Any, ...]:
        return show_page(name, cls, 1, request)

    def show_selected(name: str, cls: str, chosen: str, request: gr.Request) -> tuple[Any, ...]:
        """The first page (where a new image lands) with `chosen` highlighted, so the grid, the preview
        and Delete all point at the same image."""
        items, ids, number, text = show_page(name, cls, 1, request)
        index = ids.index(chosen) if chosen in ids else None
        return gr.Gallery(items, selected_index=index), ids, number, text

    def rater(value: int) -> Any:
        @ui_errors
        def handler(chosen: str, request: gr.Request) -> str:
            if not chosen:
                raise gr.Error("Pick an image first.")
            ratings.rate(ctx, owner(request), "image", chosen, value)
            return "Rated good — thanks." if value > 0 else "Rated bad — thanks."

        return handler

    private = {"api_visibility": "private"}
    rate_up.click(rater(1), image_id, notice, **FAST, **private)
    rate_down.click(rater(-1), image_id, notice, **FAST, **private)
    listing = [grid, page_ids, page, summary]
    filters = [model, label, page]
    refresh.click(show_page, filters, listing, **FAST, api_name="gallery_page")
    model.change(first_page, [model, label], listing, **FAST, **private)
    label.change(first_page, [model, label], listing, **FAST, **private)
    prev_page.click(step(-1), filters, listing, **FAST, **private)
    next_page.click(step(1), filters, listing, **FAST, **private)
    page.submit(show_page, filters, listing, **FAST, **private)
    grid.select(select, page_ids, image_id, **FAST, **private)
    # Opening an image fills its own line (made_by), so a Re-run's message in `notice` is not overwritten
    # when the re-run selects its new copy.
    image_id.change(open_image, image_id, [preview, details, made_by], **FAST, api_name="gallery_open")
    rerun.click(do_rerun, image_id, [image_id, preview, details, notice], concurrency_id="generate",
                concurrency_limit=ctx.settings.generation_slots(), api_name="gallery_rerun").then(
        show_selected, [model, label, image_id], listing, **FAST, **private)
    delete.click(lambda: gr.Row(visible=True), None, confirm_row, **FAST, **private)
    cancel.click(lambda: gr.Row(visible=False), None, confirm_row, **FAST, **private)
    confirm.click(do_delete, image_id, [image_id, preview, details, notice, confirm_row], **FAST,
                  api_name="gallery_delete").then(show_page, filters, listing, **FAST, **private)
    return show_page, filters, listing
