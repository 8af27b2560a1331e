"""Your personas (who you are in character chats): pick, edit, make default, delete with confirmation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import characters as chars
from ..services.context import AppContext
from . import FAST

NEW = ""  # the picker's value for "a new persona"


@dataclass
class PersonaEditor:
    pick: gr.Dropdown
    name: gr.Textbox
    description: gr.Textbox
    is_default: gr.Checkbox
    save: gr.Button
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    keep: gr.Button


def build_layout() -> PersonaEditor:
    with gr.Accordion("Your personas", open=False, elem_id="personas"):
        pick = gr.Dropdown([("+ New persona", NEW)], value=NEW, label="Persona", elem_id="persona-pick")
        name = gr.Textbox(label="Name", info="fills {{user}}", elem_id="persona-name")
        description = gr.Textbox(label="Description", lines=3, info="joins the context of character chats")
        is_default = gr.Checkbox(label="Default persona", elem_id="persona-default")
        with gr.Row():
            save = gr.Button("Save persona", size="sm", elem_id="persona-save")
            delete = gr.Button("Delete…", size="sm", variant="stop")
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Delete for good", size="sm", variant="stop")
            keep = gr.Button("Keep it", size="sm")
    return PersonaEditor(pick, name, description, is_default, save, delete, confirm_row, confirm, keep)


def wire(ctx: AppContext, ui: PersonaEditor) -> None:
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def shown(who: str, pid: str) -> dict[Any, Any]:
        found = chars.list_personas(ctx, who)
        row = next((p for p in found if p.id == pid), None)
        return {ui.pick: gr.Dropdown(choices=[("+ New persona", NEW)] + [(p.name + (" ★" if p.is_default else ""), p.id)
                                                                          for p in found], value=row.id if row else NEW),
                ui.name: row.name if row else "", ui.description: row.description if row else "",
                ui.is_default: row.is_default if row else False, ui.confirm_row: gr.Row(visible=False)}

    @ui_errors
    def select(pid: str | None, request: gr.Request) -> dict[Any, Any]:
        return shown(owner(request), pid or NEW)

    @ui_errors
    def save(pid: str | None, name: str, description: str, is_default: bool, request: gr.Request) -> dict[Any, Any]:
        who = owner(request)
        pid = chars.save_persona(ctx, who, pid or None, name, description, make_default=is_default)
        if not is_default and any(p.id == pid and p.is_default for p in chars.list_personas(ctx, who)):
            chars.set_default_persona(ctx, who, None)
        gr.Info("Persona saved.")
        return shown(who, pid)

    @ui_errors
    def delete(pid: str | None, request: gr.Request) -> dict[Any, Any]:
        if not pid:
            raise gr.Error("Pick a persona to delete.")
        chars.delete_persona(ctx, owner(request), pid)
        return shown(owner(request), NEW)

    @ui_errors
    def refresh(pid: str | None, request: gr.Request) -> Any:
        return shown(owner(request), pid or NEW)[ui.pick]

    outputs = [ui.pick, ui.name, ui.description, ui.is_default, ui.confirm_row]
    private = {"api_visibility": "private"}
    ui.pick.focus(refresh, ui.pick, ui.pick, **FAST, **private)
    ui.pick.input(select, ui.pick, outputs, **FAST, **private)
    ui.save.click(save, [ui.pick, ui.name, ui.description, ui.is_default], outputs, **FAST, api_name="save_persona")
    ui.delete.click(lambda: gr.Row(visible=True), None, ui.confirm_row, **FAST, **private)
    ui.keep.click(lambda: gr.Row(visible=False), None, ui.confirm_row, **FAST, **private)
    ui.confirm.click(delete, ui.pick, outputs, **FAST, api_name="delete_persona")
