"""The Prompts workspace: the prompt library (list, search, edit, delete with confirmation, JSON
import/export). Prompts are inserted from the Chat and Story tabs' "Prompt library" pickers."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import prompt_library as lib
from ..services.context import AppContext
from . import FAST, list_label
from .characters import _temp_file
from .downloads import download_slot, wire_export


def build(ctx: AppContext) -> tuple[Any, list[Any], Any]:
    """Lay out the Prompts tab; returns (handler, inputs, output) that refresh the list when it is shown."""
    prompt_id = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=240):
            new = gr.Button("+ New prompt", elem_id="prompts-new")
            search = gr.Textbox(show_label=False, placeholder="Search prompts…", elem_id="prompts-search")
            listing = gr.Radio([], label="Prompts", elem_id="prompts-list")
            with gr.Row():
                export = gr.Button("⬇ Export .json", size="sm", elem_id="prompts-export")
                upload = gr.UploadButton("Import .json", file_types=[".json"], size="sm", elem_id="prompts-import")
            download = download_slot("prompts-download")
        with gr.Column(scale=4):
            name = gr.Textbox(label="Name", elem_id="prompt-name")
            text = gr.Textbox(label="Prompt", lines=8, max_lines=30, elem_id="prompt-text",
                              info="{{name}} marks a variable: inserting the prompt asks for its value "
                                   f"(at most {lib.MAX_VARIABLES}); {{{{char}}}} and {{{{user}}}} are left for chats")
            variables = gr.Markdown(elem_id="prompt-variables")
            with gr.Row():
                save = gr.Button("Save", variant="primary", elem_id="prompt-save")
                delete = gr.Button("Delete…", variant="stop", elem_id="prompt-delete")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Delete for good", variant="stop", size="sm", elem_id="prompt-delete-confirm")
                keep = gr.Button("Keep it", size="sm")

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def describe(body: str) -> str:
        names = lib.variables(body or "")
        return "Variables: " + ", ".join(f"`{n}`" for n in names) if names else "No variables."

    @ui_errors
    def refresh(query: str, pid: str | None, request: gr.Request) -> Any:
        found = lib.list_prompts(ctx, owner(request), query or "")
        return gr.Radio(choices=[(p.name, p.id) for p in found], value=pid if any(p.id == pid for p in found) else None,
                        label=list_label("prompts", query, len(found)))

    def show(view: lib.PromptView | None) -> dict[Any, Any]:
        return {prompt_id: view.id if view else None, name: view.name if view else "", text: view.text if view else "",
                variables: describe(view.text) if view else "", confirm_row: gr.Row(visible=False)}

    @ui_errors
    def open_prompt(pid: str | None, request: gr.Request) -> dict[Any, Any]:
        return show(lib.get_prompt(ctx, owner(request), pid)) if pid else {}

    @ui_errors
    def save_prompt(pid: str | None, title: str, body: str, query: str, request: gr.Request) -> dict[Any, Any]:
        view = lib.save_prompt(ctx, owner(request), pid, title, body)
        gr.Info("Saved.")
        return {**show(view), listing: refresh(query, view.id, request)}

    @ui_errors
    def delete_prompt(pid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        if not pid:
            raise gr.Error("Open a prompt to delete it.")
        lib.delete_prompt(ctx, owner(request), pid)
        return {**show(None), listing: refresh(query, None, request)}

    @ui_errors
    def export_all(request: gr.Request) -> str:
        data = lib.export_prompts(ctx, owner(request))
        return _temp_file("prompts.json", json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8"))

    @ui_errors
    def import_file(file: Any, query: str, request: gr.Request) -> Any:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        with open(path, "rb") as f:
            added = lib.import_prompts(ctx, owner(request), f.read(lib.MAX_IMPORT_BYTES + 1))
        gr.Info(f"Imported {added} prompt(s).")
        return refresh(query, None, request)

    private = {"api_visibility": "private"}
    shown = [prompt_id, name, text, variables, confirm_row]
    search.change(refresh, [search, prompt_id], listing, **FAST, api_name="list_prompts")
    listing.select(open_prompt, listing, shown, **FAST, **private)
    new.click(lambda: {**show(None), listing: gr.Radio(value=None)}, None, shown + [listing], **FAST, **private)
    text.change(describe, text, variables, **FAST, **private)
    save.click(save_prompt, [prompt_id, name, text, search], shown + [listing], **FAST, api_name="save_prompt")
    delete.click(lambda: gr.Row(visible=True), None, confirm_row, **FAST, **private)
    keep.click(lambda: gr.Row(visible=False), None, confirm_row, **FAST, **private)
    confirm.click(delete_prompt, [prompt_id, search], shown + [listing], **FAST, api_name="delete_prompt")
    wire_export(export, export_all, None, download, **FAST, api_name="export_prompts")
    upload.upload(import_file, [upload, search], listing, **FAST, api_name="import_prompts")
    return refresh, [search, prompt_id], listing
