"""The instruct template picker and the "what was sent" view of the Chat tab, with the editor of a
person's own Jinja templates (checked in the sandbox before they are saved)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from generators.text.instruct import FORMATS

from ..errors import ui_errors
from ..services import chat as chat_svc
from ..services import instruct as svc
from ..services.context import AppContext
from . import FAST

STARTER = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


@dataclass(frozen=True)
class InstructControls:
    template: gr.Dropdown
    show_sent: gr.Button
    sent_info: gr.Markdown
    sent: gr.Textbox
    name: gr.Textbox
    source: gr.Code
    save: gr.Button
    delete: gr.Button
    status: gr.Markdown


def build_layout(prefix: str) -> InstructControls:
    with gr.Accordion("Instruct template · what was sent", open=False):
        with gr.Row():
            template = gr.Dropdown([svc.MODEL_OWN, *FORMATS], value=svc.MODEL_OWN, allow_custom_value=True, scale=3,
                                   label="Instruct template", elem_id=f"{prefix}-template",
                                   info="how the conversation is written out for the model (its own by default)")
            show_sent = gr.Button("Show what was sent", size="sm", scale=1, elem_id=f"{prefix}-show-sent")
        sent_info = gr.Markdown("*Press “Show what was sent” after a reply.*", elem_id=f"{prefix}-sent-info")
        sent = gr.Textbox(label="Exactly as the model read it", lines=8, max_lines=30, interactive=False,
                          elem_id=f"{prefix}-sent")
        with gr.Accordion("Your own templates (Jinja, as Hugging Face chat templates)", open=False):
            with gr.Row():
                name = gr.Textbox(label="Name", placeholder="a name for this template", scale=3)
                save = gr.Button("Check and save", size="sm", scale=1, elem_id=f"{prefix}-template-save")
                delete = gr.Button("Delete chosen", size="sm", variant="stop", scale=1)
            source = gr.Code(STARTER, language="jinja2", label="Template (gets messages, add_generation_prompt, "
                             "bos_token, eos_token)", lines=6, elem_id=f"{prefix}-template-source")
            status = gr.Markdown(elem_id=f"{prefix}-template-status")
    return InstructControls(template, show_sent, sent_info, sent, name, source, save, delete, status)


def wire(ctx: AppContext, ui: InstructControls, chat_id: gr.State, prefix: str) -> None:
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def listed(request: gr.Request, value: str | None) -> gr.Dropdown:
        return gr.Dropdown(choices=svc.template_names(ctx, owner(request)), value=value or svc.MODEL_OWN)

    @ui_errors
    def show_sent(cid: str | None, request: gr.Request) -> dict[Any, Any]:
        if not cid:
            raise gr.Error("Open or start a chat first.")
        rendered = chat_svc.sent_prompt(ctx, owner(request), cid)
        left_out = f" · the {rendered.dropped_messages} oldest message(s) left out to fit" \
            if rendered.dropped_messages else ""
        info = f"**{rendered.tokens:,} tokens** · {len(rendered.text):,} characters{left_out}"
        return {ui.sent_info: info, ui.sent: rendered.text}

    @ui_errors
    def pick(name: str | None, request: gr.Request) -> dict[Any, Any]:
        chosen = svc.get_template(ctx, owner(request), name)
        if chosen.source is None:
            return {ui.status: "The model's own chat template is used (from its tokenizer)."}
        return {ui.source: chosen.source, ui.name: "" if chosen.builtin else chosen.name,
                ui.status: f"**{chosen.name}** is shown below; edit it and save it under a name of your own."}

    @ui_errors
    def save(name: str, source: str, request: gr.Request) -> dict[Any, Any]:
        saved = svc.save_template(ctx, owner(request), name, source)
        return {ui.template: listed(request, saved.name), ui.status: f"Checked and saved **{saved.name}**; it is chosen."}

    @ui_errors
    def delete(name: str | None, request: gr.Request) -> dict[Any, Any]:
        svc.delete_template(ctx, owner(request), name)
        return {ui.template: listed(request, None), ui.status: f"Deleted **{name}**."}

    def refresh(current: str | None, request: gr.Request) -> gr.Dropdown:
        return listed(request, current)

    ui.show_sent.click(show_sent, chat_id, [ui.sent_info, ui.sent], **FAST, api_name=f"{prefix}_sent_prompt")
    ui.template.input(pick, ui.template, [ui.source, ui.name, ui.status], **FAST, api_visibility="private")
    ui.template.focus(refresh, ui.template, ui.template, **FAST, api_visibility="private")
    ui.save.click(save, [ui.name, ui.source], [ui.template, ui.status], **FAST, api_name=f"{prefix}_save_template")
    ui.delete.click(delete, ui.template, [ui.template, ui.status], **FAST, api_name=f"{prefix}_delete_template")
