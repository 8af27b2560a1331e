"""The Characters workspace: your characters (list, search, edit, delete), Tavern card import/export,
"Chat with…", and your personas.

Layout first, listeners at the bottom; every click lands in `webui.services.characters`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from storage.files import private_dir, write_private

from ..errors import ui_errors
from ..services import cards
from ..services import characters as chars
from ..services.context import AppContext
from . import FAST, list_label, personas
from .downloads import download_slot, wire_export

GREETING_SEPARATOR = "<NEXT>"  # on a line of its own, between alternative greetings


def _temp_file(name: str, data: bytes) -> str:
    folder = Path(tempfile.mkdtemp(prefix="character-", dir=private_dir(get_upload_folder())))  # 0700
    path = folder / name
    write_private(path, data)
    return str(path)


def split_greetings(text: str) -> tuple[str, ...]:
    parts = re.split(rf"^\s*{re.escape(GREETING_SEPARATOR)}\s*$", text or "", flags=re.MULTILINE)
    return tuple(p.strip() for p in parts if p.strip())


def build(ctx: AppContext, open_chat: gr.Textbox | None = None, tabs: gr.Tabs | None = None) -> tuple[Any, list[Any], Any]:
    """Lay out the Characters tab; "Chat with…" writes the new chat's id into `open_chat` and shows `tabs`' chat.

    Returns (handler, inputs, output) that refresh the list when the tab is shown."""
    character_id = gr.State(None)
    new_avatar = gr.State(None)  # None: keep the stored avatar; "": remove it; a path: the checked new one
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=240):
            new = gr.Button("+ New character", elem_id="characters-new")
            search = gr.Textbox(show_label=False, placeholder="Search characters…", elem_id="characters-search")
            listing = gr.Radio([], label="Characters", elem_id="characters-list")
            upload = gr.UploadButton("Import card (.png / .json)", file_types=[".png", ".json"], size="sm",
                                     elem_id="characters-import")
            gr.Markdown("Character Card V1, V2 and V3 (SillyTavern, Chub, …)", elem_classes="characters-hint")
            persona_ui = personas.build_layout()
        with gr.Column(scale=4):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=180):
                    # shown only: an upload goes through the UploadButton, checked before it is decoded
                    avatar = gr.Image(label="Avatar", type="filepath", height=240, interactive=False,
                                      elem_id="character-avatar")
                    with gr.Row():
                        avatar_upload = gr.UploadButton("Choose…", file_types=["image"], size="sm", min_width=80,
                                                        elem_id="character-avatar-upload")
                        avatar_clear = gr.Button("Remove", size="sm", min_width=80)
                with gr.Column(scale=3):
                    name = gr.Textbox(label="Name", elem_id="character-name")
                    with gr.Row():
                        tags = gr.Textbox(label="Tags", info="comma-separated", scale=2)
                        creator = gr.Textbox(label="Creator", scale=1)
                        version = gr.Textbox(label="Version", scale=1)
                    description = gr.Textbox(label="Description", lines=4, max_lines=16, elem_id="character-description",
                                             info="who {{char}} is; {{char}} and {{user}} are filled in")
            with gr.Row():
                personality = gr.Textbox(label="Personality", lines=2, max_lines=8)
                scenario = gr.Textbox(label="Scenario", lines=2, max_lines=8)
            first_message = gr.Textbox(label="First message (greeting)", lines=3, max_lines=12,
                                       elem_id="character-first-message")
            alternates = gr.Textbox(label="Alternative greetings", lines=2, max_lines=12,
                                    info=f"separate them with a line holding only {GREETING_SEPARATOR}; "
                                         "in a chat they are the other versions of the first reply (◀ ▶)")
            examples = gr.Textbox(label="Example dialogue", lines=4, max_lines=16,
                                  info="<START> begins each example; lines start with {{user}}: or {{char}}:")
            with gr.Accordion("Prompt overrides and notes", open=False):
                system_prompt = gr.Textbox(label="System prompt", lines=2,
                                           info="replaces the chat's system prompt; {{original}} inserts it")
                post_history = gr.Textbox(label="Post-history instructions", lines=2,
                                          info="added after your latest message")
                notes = gr.Textbox(label="Creator's notes", lines=2, info="for people; not sent to the model")
            notice = gr.Markdown(elem_id="characters-notice")
            with gr.Row():
                save = gr.Button("Save", variant="primary", elem_id="character-save")
                chat_with = gr.Button("Chat with this character", elem_id="character-chat")
                export_kind = gr.Dropdown([(v, k) for k, v in chars.EXPORT_KINDS.items()], value="png",
                                          show_label=False, container=False, min_width=200, elem_id="character-export-kind")
                export = gr.Button("⬇ Export card", elem_id="character-export")
                delete = gr.Button("Delete…", variant="stop", elem_id="character-delete")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Delete for good", variant="stop", size="sm", elem_id="character-delete-confirm")
                keep = gr.Button("Keep it", size="sm")
            download = download_slot("character-download")

    editor = [name, tags, creator, version, description, personality, scenario, first_message, alternates, examples,
              system_prompt, post_history, notes]

    # ------------------------------------------------------------ handlers
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def refresh(query: str, cid: str | None, request: gr.Request) -> Any:
        found = chars.list_characters(ctx, owner(request), query or "")
        return gr.Radio(choices=[(c.name, c.id) for c in found], value=cid if any(c.id == cid for c in found) else None,
                        label=list_label("characters", query, len(found)))

    def show(view: chars.CharacterView | None, message: str = "") -> dict[Any, Any]:
        c = view.card if view else cards.Card(name="")
        values = [c.name, ", ".join(c.tags), c.creator, c.character_version, c.description, c.personality, c.scenario,
                  c.first_message, f"\n{GREETING_SEPARATOR}\n".join(c.alternate_greetings), c.example_dialogue,
                  c.system_prompt, c.post_history_instructions, c.creator_notes]
        image = _temp_file("avatar.png", view.avatar) if view and view.avatar else None
        return {**dict(zip(editor, values, strict=True)), avatar: image, character_id: view.id if view else None,
                notice: message, confirm_row: gr.Row(visible=False), new_avatar: None}

    @ui_errors
    def open_character(cid: str | None, request: gr.Request) -> dict[Any, Any]:
        return show(chars.get_character(ctx, owner(request), cid)) if cid else {}

    def card_from(values: dict[Any, Any], extra: dict[str, Any]) -> cards.Card:
        return cards.Card(
            name=values[name] or "", description=values[description] or "", personality=values[personality] or "",
            scenario=values[scenario] or "", first_message=values[first_message] or "",
            alternate_greetings=split_greetings(values[alternates]), example_dialogue=values[examples] or "",
            system_prompt=values[system_prompt] or "", post_history_instructions=values[post_history] or "",
            creator_notes=values[notes] or "", creator=values[creator] or "", character_version=values[version] or "",
            tags=tuple(t.strip() for t in (values[tags] or "").split(",") if t.strip()), extra=extra)

    @ui_errors
    def save_character(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        who, cid = owner(request), values[character_id]
        extra = chars.get_character(ctx, who, cid).card.extra if cid else {}  # the card's other fields stay
        chosen = values[new_avatar]
        if chosen is None:
            cid = chars.save_character(ctx, who, cid, card_from(values, extra))  # the avatar stays as it is
        else:
            cid = chars.save_character(ctx, who, cid, card_from(values, extra), Path(chosen).read_bytes() if chosen else None)
        return {**show(chars.get_character(ctx, who, cid), "Saved."), listing: refresh(values[search], cid, request)}

    @ui_errors
    def choose_avatar(file: Any) -> dict[Any, Any]:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        with open(path, "rb") as f:
            raw = f.read(cards.MAX_FILE_BYTES + 1)
        checked = _temp_file("avatar.png", cards.avatar_from_image(raw))  # size checked before decoding
        return {avatar: checked, new_avatar: checked, notice: "New avatar: press Save to keep it."}

    @ui_errors
    def import_card(file: Any, query: str, request: gr.Request) -> dict[Any, Any]:
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            raise gr.Error("No file was received.")
        view = chars.import_card(ctx, owner(request), Path(path).read_bytes(), Path(path).name)
        return {**show(view, f"Imported **{view.card.name}**."), listing: refresh(query, view.id, request)}

    @ui_errors
    def export_card(cid: str | None, kind: str, request: gr.Request) -> str:
        if not cid:
            raise gr.Error("Open or save a character to export it.")
        filename, data = chars.export_card(ctx, owner(request), cid, kind or "png")
        return _temp_file(filename, data)

    @ui_errors
    def delete_character(cid: str | None, query: str, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            raise gr.Error("Open a character to delete it.")
        chars.delete_character(ctx, owner(request), cid)
        return {**show(None, "Deleted. Chats with it keep their messages."), listing: refresh(query, None, request)}

    @ui_errors
    def start_chat(cid: str | None, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            raise gr.Error("Save the character first, then chat with it.")
        out: dict[Any, Any] = {}
        if open_chat is not None:
            out[open_chat] = chars.start_chat(ctx, owner(request), cid)
        if tabs is not None:
            out[tabs] = gr.Tabs(selected="chat")
        return out

    # ------------------------------------------------------------ wiring
    private = {"api_visibility": "private"}
    shown = editor + [avatar, character_id, notice, confirm_row, new_avatar]
    search.change(refresh, [search, character_id], listing, **FAST, api_name="list_characters")
    listing.select(open_character, listing, shown, **FAST, **private)
    new.click(lambda: {**show(None), listing: gr.Radio(value=None)}, None, shown + [listing], **FAST, **private)
    save.click(save_character, {character_id, search, new_avatar, *editor}, shown + [listing], **FAST,
               api_name="save_character")
    avatar_upload.upload(choose_avatar, avatar_upload, [avatar, new_avatar, notice], **FAST, **private)
    avatar_clear.click(lambda: {avatar: None, new_avatar: "", notice: "Avatar removed: press Save to keep it so."},
                       None, [avatar, new_avatar, notice], **FAST, **private)
    upload.upload(import_card, [upload, search], shown + [listing], **FAST, api_name="import_character")
    wire_export(export, export_card, [character_id, export_kind], download, **FAST, api_name="export_character")
    delete.click(lambda: gr.Row(visible=True), None, confirm_row, **FAST, **private)
    keep.click(lambda: gr.Row(visible=False), None, confirm_row, **FAST, **private)
    confirm.click(delete_character, [character_id, search], shown + [listing], **FAST, api_name="delete_character")
    targets = [c for c in (open_chat, tabs) if c is not None]
    chat_with.click(start_chat, character_id, targets, **FAST, **private)
    personas.wire(ctx, persona_ui)
    return refresh, [search, character_id], listing
