"""The story list beside the document: open, search, rename, fork, delete, snapshots, export, import."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from storage.files import private_dir, write_private

from ..errors import ui_errors
from ..services import story as svc
from ..services.context import AppContext
from . import FAST, list_label
from .downloads import download_slot, wire_export


@dataclass
class Sidebar:
    new: gr.Button
    search: gr.Textbox
    stories: gr.Radio
    rename: gr.Button
    fork: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button
    snap_name: gr.Textbox
    snap_save: gr.Button
    snapshots: gr.Dropdown
    snap_restore: gr.Button
    snap_rename: gr.Button
    snap_delete: gr.Button
    snap_confirm_row: gr.Row
    snap_confirm: gr.Button
    snap_keep: gr.Button
    export_md: gr.Button
    export_txt: gr.Button
    export_json: gr.Button
    download: gr.DownloadButton
    upload: gr.UploadButton
    open_id: gr.Textbox  # hidden: lets API clients open a story by id


def build_layout() -> Sidebar:
    new = gr.Button("+ New story", variant="secondary", elem_id="story-new")
    search = gr.Textbox(show_label=False, placeholder="Search stories…", elem_id="story-search")
    stories = gr.Radio([], label="Stories", elem_id="story-list")
    with gr.Accordion("This story", open=False):
        with gr.Row():
            rename = gr.Button("Rename", size="sm")
            fork = gr.Button("Fork", size="sm", elem_id="story-fork")
            delete = gr.Button("Delete…", size="sm", variant="stop", elem_id="story-delete")
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Delete for good", size="sm", variant="stop", elem_id="story-delete-confirm")
            cancel = gr.Button("Keep it", size="sm")
        with gr.Row():
            export_md = gr.Button("⬇ .md", size="sm", min_width=50, elem_id="story-export-md")
            export_txt = gr.Button("⬇ .txt", size="sm", min_width=50, elem_id="story-export-txt")
            export_json = gr.Button("⬇ .json", size="sm", min_width=50, elem_id="story-export-json")
        download = download_slot("story-download")
        upload = gr.UploadButton("Import .json", file_types=[".json"], size="sm")
    with gr.Accordion("Snapshots", open=False):
        snap_name = gr.Textbox(label="Name this version", placeholder="e.g. before the twist", elem_id="story-snap-name")
        with gr.Row():
            snap_save = gr.Button("Save snapshot", size="sm", elem_id="story-snap-save")
            snap_rename = gr.Button("Rename picked", size="sm", elem_id="story-snap-rename")
        snapshots = gr.Dropdown([], label="Saved versions", elem_id="story-snapshots")
        with gr.Row():
            snap_restore = gr.Button("Return to it", size="sm")
            snap_delete = gr.Button("Delete…", size="sm", variant="stop", elem_id="story-snap-delete")
        with gr.Row(visible=False) as snap_confirm_row:
            snap_confirm = gr.Button("Delete snapshot", size="sm", variant="stop", elem_id="story-snap-delete-confirm")
            snap_keep = gr.Button("Keep it", size="sm")
    open_id = gr.Textbox(visible=False)
    return Sidebar(
        new, search, stories, rename, fork, delete, confirm_row, confirm, cancel, snap_name, snap_save,
        snapshots, snap_restore, snap_rename, snap_delete, snap_confirm_row, snap_confirm, snap_keep,
        export_md, export_txt, export_json, download, upload, open_id,
    )  # fmt: skip


def _export_path(title: str, suffix: str, content: str) -> str:
    stem = re.sub(r"[^\w-]+", "-", title or "story").strip("-")[:40] or "story"
    path = Path(tempfile.mkdtemp(prefix="export-", dir=private_dir(get_upload_folder()))) / f"{stem}{suffix}"  # 0700, swept
    write_private(path, content.encode("utf-8"))
    return str(path)


def wire(
    ctx: AppContext,
    side: Sidebar,
    story_id: gr.State,
    title: gr.Textbox,
    render: Callable[..., dict[Any, Any]],
    view_outputs: list[Any],
    new_story: Callable[..., dict[Any, Any]],
    new_inputs: set[Any],
) -> Callable[..., Any]:
    """Wire the sidebar's events; returns the handler that refreshes the story list.

    `render(view, owner)` must also set the page's settings fields (an opened story brings its own; the
    owner's own models among them)."""

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def refresh_list(query: str, sid: str | None, request: gr.Request) -> Any:
        stories = svc.list_stories(ctx, owner(request), query or "")
        return gr.Radio(choices=[(c.title, c.id) for c in stories],
                        value=sid if any(c.id == sid for c in stories) else None,
                        label=list_label("stories", query, len(stories)))

    def snapshot_choices(sid: str | None, request: gr.Request, keep: str | None = None) -> Any:
        snaps = svc.list_snapshots(ctx, owner(request), sid) if sid else []
        label = "{} · {:%Y-%m-%d %H:%M} · {:,} chars"
        value = keep if any(x.id == keep for x in snaps) else None
        return gr.Dropdown(choices=[(label.format(x.name, x.created_at, x.chars), x.id) for x in snaps], value=value)

    def opened(view: svc.StoryView, query: str, request: gr.Request) -> dict[Any, Any]:
        return {
            **render(view, owner(request)),
            side.stories: refresh_list(query, view.id, request),
            side.snapshots: snapshot_choices(view.id, request),
            side.confirm_row: gr.Row(visible=False),
            side.snap_confirm_row: gr.Row(visible=False),
        }

    @ui_errors
    def open_story(sid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        if not sid:
            return {}
        return opened(svc.get_story(ctx, owner(request), sid), query, request)

    @ui_errors
    def create(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        return opened(new_story(values, request), values[side.search], request)

    @ui_errors
    def rename(sid: str | None, title: str, query: str, request: gr.Request) -> Any:
        view = svc.rename_story(ctx, owner(request), sid or "", title)
        gr.Info("Renamed.")
        return refresh_list(query, view.id, request)

    @ui_errors
    def fork(sid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        return opened(svc.duplicate_story(ctx, owner(request), sid or ""), query, request)

    @ui_errors
    def delete(sid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        svc.delete_story(ctx, owner(request), sid or "")
        gr.Info("Story deleted.")
        return {
            **render(svc.EMPTY),
            story_id: None,
            title: "",
            side.stories: refresh_list(query, None, request),
            side.snapshots: gr.Dropdown(choices=[], value=None),
            side.confirm_row: gr.Row(visible=False),
            side.snap_confirm_row: gr.Row(visible=False),
        }

    @ui_errors
    def save_snapshot(sid: str | None, name: str, request: gr.Request) -> dict[Any, Any]:
        svc.save_snapshot(ctx, owner(request), sid or "", name)
        gr.Info(f"Snapshot “{name.strip()}” saved.")
        return {side.snapshots: snapshot_choices(sid, request), side.snap_name: ""}

    @ui_errors
    def rename_snapshot(sid: str | None, snap: str | None, name: str, request: gr.Request) -> dict[Any, Any]:
        if not snap:
            raise gr.Error("Pick a saved version to rename first.")
        svc.rename_snapshot(ctx, owner(request), sid or "", snap, name)
        gr.Info(f"Snapshot renamed to “{name.strip()}”.")
        return {side.snapshots: snapshot_choices(sid, request, keep=snap), side.snap_name: ""}

    @ui_errors
    def delete_snapshot(sid: str | None, snap: str | None, request: gr.Request) -> dict[Any, Any]:
        if not snap:
            raise gr.Error("Pick a saved version to delete first.")
        svc.delete_snapshot(ctx, owner(request), sid or "", snap)
        gr.Info("Snapshot deleted.")
        return {side.snapshots: snapshot_choices(sid, request), side.snap_confirm_row: gr.Row(visible=False)}

    @ui_errors
    def restore(sid: str | None, snap: str | None, request: gr.Request) -> dict[Any, Any]:
        if not snap:
            raise gr.Error("Pick a saved version first.")
        return render(svc.restore_snapshot(ctx, owner(request), sid or "", snap), owner(request))

    def exporter(fmt: str) -> Callable[..., Any]:
        @ui_errors
        def export(sid: str | None, request: gr.Request) -> Any:
            view = svc.get_story(ctx, owner(request), sid or "")
            if fmt == "json":
                content = json.dumps(svc.export_json(ctx, owner(request), view.id), ensure_ascii=False, indent=2)
            elif fmt == "md":
                content = svc.export_markdown(ctx, owner(request), view.id)
            else:
                content = svc.export_text(ctx, owner(request), view.id)
            return _export_path(view.title, f".{fmt}", content)

        return export

    @ui_errors
    def import_story(file: Any, query: str, request: gr.Request) -> dict[Any, Any]:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        return opened(svc.import_json(ctx, owner(request), Path(path).read_bytes()), query, request)

    opened_outputs = view_outputs + [side.stories, side.snapshots, side.confirm_row, side.snap_confirm_row]
    private = {"api_visibility": "private"}
    side.stories.select(
        open_story, [side.stories, side.search], opened_outputs, **FAST, api_name="select_story", **private
    )
    side.open_id.submit(open_story, [side.open_id, side.search], opened_outputs, **FAST, api_name="open_story")
    side.search.change(refresh_list, [side.search, story_id], side.stories, **FAST, api_name="list_stories")
    side.new.click(create, new_inputs | {side.search}, opened_outputs, **FAST, api_name="new_story")
    side.rename.click(rename, [story_id, title, side.search], side.stories, **FAST, api_name="rename_story")
    side.fork.click(fork, [story_id, side.search], opened_outputs, **FAST, api_name="fork_story")
    side.delete.click(lambda: gr.Row(visible=True), None, side.confirm_row, **FAST, **private)
    side.cancel.click(lambda: gr.Row(visible=False), None, side.confirm_row, **FAST, **private)
    side.confirm.click(delete, [story_id, side.search], opened_outputs, **FAST, api_name="delete_story")
    side.snap_save.click(
        save_snapshot, [story_id, side.snap_name], [side.snapshots, side.snap_name], **FAST, api_name="save_snapshot"
    )
    side.snap_rename.click(
        rename_snapshot, [story_id, side.snapshots, side.snap_name], [side.snapshots, side.snap_name], **FAST,
        api_name="rename_snapshot",
    )  # fmt: skip
    side.snap_delete.click(lambda: gr.Row(visible=True), None, side.snap_confirm_row, **FAST, **private)
    side.snap_keep.click(lambda: gr.Row(visible=False), None, side.snap_confirm_row, **FAST, **private)
    side.snap_confirm.click(
        delete_snapshot, [story_id, side.snapshots], [side.snapshots, side.snap_confirm_row], **FAST,
        api_name="delete_snapshot",
    )  # fmt: skip
    side.snap_restore.click(restore, [story_id, side.snapshots], view_outputs, **FAST, api_name="restore_snapshot")
    for fmt, button in (("md", side.export_md), ("txt", side.export_txt), ("json", side.export_json)):
        wire_export(button, exporter(fmt), story_id, side.download, **FAST, api_name=f"story_export_{fmt}")
    side.upload.upload(import_story, [side.upload, side.search], opened_outputs, **FAST, api_name="import_story")
    return refresh_list
