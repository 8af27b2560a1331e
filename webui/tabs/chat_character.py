"""Start a chat with a character from the chat sidebar; show which character a chat is with.

`opened` is a hidden box: a chat id written into it (by Start here, or by the Characters tab's
"Chat with…") opens that chat in the conversation view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import characters as chars
from ..services import chat as svc
from ..services.context import AppContext
from . import FAST


@dataclass
class CharacterPicker:
    character: gr.Dropdown
    persona: gr.Dropdown
    start: gr.Button
    opened: gr.Textbox
    accordion: gr.Accordion


def build_layout() -> CharacterPicker:
    with gr.Accordion("Chat with a character", open=False, elem_id="chat-character-picker") as accordion:
        character = gr.Dropdown([], value=None, label="Character", elem_id="chat-character",
                                info="import or make one in the Characters tab")
        persona = gr.Dropdown([], value=None, label="You are", elem_id="chat-persona")
        start = gr.Button("Start chat", size="sm", variant="primary", elem_id="chat-character-start")
    opened = gr.Textbox(visible=False, elem_id="chat-opened")
    return CharacterPicker(character, persona, start, opened, accordion)


def build_header() -> gr.Markdown:
    """Above the conversation: which character the open chat is with (empty for a plain chat)."""
    return gr.Markdown("", elem_id="chat-with-character")


def header_text(view: svc.ChatView | None) -> str:
    link = chars.chat_character(view.settings) if view else None
    return f"Chat with **{link['name']}**" if link else ""


def choices(ctx: AppContext, owner: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]:
    """(characters, personas, the default persona's id) for the pickers."""
    people = [(c.name, c.id) for c in chars.list_characters(ctx, owner)]
    personas = chars.list_personas(ctx, owner)
    default = next((p.id for p in personas if p.is_default), None)
    return people, [("Your default persona", "")] + [(p.name, p.id) for p in personas], default


def wire(ctx: AppContext, picker: CharacterPicker, render: Callable[[svc.ChatView], dict[Any, Any]],
         view_outputs: list[Any], chats: gr.Radio, refresh_list: Callable[..., Any], search: gr.Textbox,
         chat_id: gr.State, header: gr.Markdown) -> None:
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def refresh(current: str | None, persona: str | None, request: gr.Request) -> dict[Any, Any]:
        people, personas, default = choices(ctx, owner(request))
        keep = current if any(cid == current for _, cid in people) else None
        chosen = persona if persona and any(pid == persona for _, pid in personas) else default or ""
        return {picker.character: gr.Dropdown(choices=people, value=keep),
                picker.persona: gr.Dropdown(choices=personas, value=chosen)}

    @ui_errors
    def start(cid: str | None, persona: str | None, request: gr.Request) -> str:
        if not cid:
            raise gr.Error("Pick a character first (import or make one in the Characters tab).")
        return chars.start_chat(ctx, owner(request), cid, persona or None)

    @ui_errors
    def open_started(cid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            return {}
        view = svc.get_chat(ctx, owner(request), cid)
        return {**render(view), chats: refresh_list(query, view.id, request)}

    @ui_errors
    def show_header(cid: str | None, request: gr.Request) -> str:
        return header_text(svc.get_chat(ctx, owner(request), cid) if cid else None)

    private = {"api_visibility": "private"}
    chat_id.change(show_header, chat_id, header, **FAST, **private)
    for trigger in (picker.accordion.expand, picker.character.focus, picker.persona.focus):
        trigger(refresh, [picker.character, picker.persona], [picker.character, picker.persona], **FAST, **private)
    picker.start.click(start, [picker.character, picker.persona], picker.opened, **FAST,
                       api_name="start_character_chat")
    picker.opened.change(open_started, [picker.opened, search], view_outputs + [chats], **FAST, **private)
