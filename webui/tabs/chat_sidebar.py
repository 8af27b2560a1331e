"""The chat list beside the conversation: new, open, search, rename, delete, export, import."""

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
from ..services import chat as svc
from ..services.context import AppContext
from . import FAST, list_label
from .downloads import download_slot, wire_export


@dataclass
class Sidebar:
    new: gr.Button
    search: gr.Textbox
    chats: gr.Radio
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button
    export_md: gr.Button
    export_json: gr.Button
    download: gr.DownloadButton
    upload: gr.UploadButton
    open_id: gr.Textbox  # hidden: lets API clients open a chat by id


def build_layout() -> Sidebar:
    new = gr.Button("+ New chat", variant="secondary", elem_id="chat-new")
    search = gr.Textbox(show_label=False, placeholder="Search chats…", elem_id="chat-search")
    chats = gr.Radio([], label="Chats", elem_id="chat-list")
    with gr.Accordion("This chat", open=False):
        title = gr.Textbox(label="Title", elem_id="chat-title")
        with gr.Row():
            rename = gr.Button("Rename", size="sm")
            delete = gr.Button("Delete…", size="sm", variant="stop", elem_id="chat-delete")
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Delete for good", size="sm", variant="stop", elem_id="chat-delete-confirm")
            cancel = gr.Button("Keep it", size="sm")
        with gr.Row():
            export_md = gr.Button("⬇ Export .md", size="sm", elem_id="chat-export-md")
            export_json = gr.Button("⬇ Export .json", size="sm", elem_id="chat-export-json")
        download = download_slot("chat-download")
        upload = gr.UploadButton("Import .json", file_types=[".json"], size="sm")
    open_id = gr.Textbox(visible=False)
    return Sidebar(
        new, search, chats, title, rename, delete, confirm_row, confirm, cancel, export_md, export_json, download, upload, open_id
    )


def _export_path(title: str, suffix: str, content: str) -> str:
    stem = re.sub(r"[^\w-]+", "-", title or "chat").strip("-")[:40] or "chat"
    folder = Path(tempfile.mkdtemp(prefix="export-", dir=private_dir(get_upload_folder())))  # 0700, swept with the cache
    path = folder / f"{stem}{suffix}"
    write_private(path, content.encode("utf-8"))
    return str(path)


def _listed(chat: svc.ChatSummary) -> str:
    """A chat's line in the list: its title, and the character it is with when the title does not say so."""
    return f"{chat.title} · with {chat.character}" if chat.character and chat.character not in chat.title else chat.title


def wire(
    ctx: AppContext,
    side: Sidebar,
    chat_id: gr.State,
    render: Callable[[svc.ChatView], dict[Any, Any]],
    view_outputs: list[Any],
) -> Callable[..., Any]:
    """Wire the sidebar's events; returns the handler that refreshes the chat list."""

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def refresh_list(query: str, cid: str | None, request: gr.Request) -> Any:
        chats = svc.list_chats(ctx, owner(request), query or "")
        return gr.Radio(choices=[(_listed(c), c.id) for c in chats], value=cid if any(c.id == cid for c in chats) else None,
                        label=list_label("chats", query, len(chats)))

    @ui_errors
    def open_chat(cid: str | None, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            return {}
        view = svc.get_chat(ctx, owner(request), cid)
        return {**render(view), side.title: view.title, side.confirm_row: gr.Row(visible=False)}

    def new_chat() -> dict[Any, Any]:
        return {**render(svc.ChatView("", "", ())), chat_id: None, side.chats: gr.Radio(value=None), side.title: ""}

    @ui_errors
    def rename(cid: str | None, title: str, query: str, request: gr.Request) -> Any:
        if not cid:
            raise gr.Error("Open a chat to rename it.")
        svc.rename_chat(ctx, owner(request), cid, title)
        gr.Info("Renamed.")
        return refresh_list(query, cid, request)

    @ui_errors
    def delete(cid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            raise gr.Error("Open a chat to delete it.")
        svc.delete_chat(ctx, owner(request), cid)
        gr.Info("Chat deleted.")
        return {**new_chat(), side.chats: refresh_list(query, None, request), side.confirm_row: gr.Row(visible=False)}

    @ui_errors
    def export(cid: str | None, fmt: str, request: gr.Request) -> Any:
        if not cid:
            raise gr.Error("Open a chat to export it.")
        view = svc.get_chat(ctx, owner(request), cid)
        if fmt == "md":
            path = _export_path(view.title, ".md", svc.export_markdown(ctx, owner(request), cid))
        else:
            data = svc.export_json(ctx, owner(request), cid)
            path = _export_path(view.title, ".json", json.dumps(data, ensure_ascii=False, indent=2))
        return path

    @ui_errors
    def import_chat(file: Any, query: str, request: gr.Request) -> dict[Any, Any]:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        raw = Path(path).read_bytes()
        view = svc.import_json(ctx, owner(request), raw)
        return {**render(view), side.title: view.title, side.chats: refresh_list(query, view.id, request)}

    list_outputs = view_outputs + [side.title, side.confirm_row]
    private = {"api_visibility": "private"}
    side.chats.select(open_chat, side.chats, list_outputs, **FAST, api_name="select_chat", **private)
    side.open_id.submit(open_chat, side.open_id, list_outputs, **FAST, api_name="open_chat")
    side.search.change(refresh_list, [side.search, chat_id], side.chats, **FAST, api_name="list_chats")
    side.new.click(new_chat, None, view_outputs + [side.chats, side.title], **FAST, api_name="new_chat")
    side.rename.click(rename, [chat_id, side.title, side.search], side.chats, **FAST, api_name="rename_chat")
    side.delete.click(lambda: gr.Row(visible=True), None, side.confirm_row, **FAST, **private)
    side.cancel.click(lambda: gr.Row(visible=False), None, side.confirm_row, **FAST, **private)
    side.confirm.click(
        delete, [chat_id, side.search], view_outputs + [side.chats, side.title, side.confirm_row], **FAST, api_name="delete_chat"
    )

    def export_md(cid: str | None, request: gr.Request) -> Any:
        return export(cid, "md", request)

    def export_json(cid: str | None, request: gr.Request) -> Any:
        return export(cid, "json", request)

    wire_export(side.export_md, export_md, chat_id, side.download, **FAST, api_name="export_markdown")
    wire_export(side.export_json, export_json, chat_id, side.download, **FAST, api_name="export_json")
    side.upload.upload(
        import_chat, [side.upload, side.search], view_outputs + [side.title, side.chats], **FAST, api_name="import_chat"
    )
    return refresh_list
