"""A saved prompt, inserted into a text box: pick it, fill in its {{variables}}, press Insert.

Used under the chat box and the story editor; the prompts themselves are kept in the Prompts tab.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import prompt_library as lib
from ..services.context import AppContext
from . import FAST


def build(ctx: AppContext, target: gr.Textbox, prefix: str) -> None:
    """Lay out the picker (inside the current layout) and wire it to `target`."""
    with gr.Accordion("Prompt library", open=False, elem_id=f"{prefix}-prompt-library") as accordion:
        with gr.Row():
            choice = gr.Dropdown([], value=None, label="Saved prompt", scale=4, elem_id=f"{prefix}-prompt-choice",
                                 info="kept in the Prompts tab")
            insert = gr.Button("Insert", scale=1, elem_id=f"{prefix}-prompt-insert")
        with gr.Row():
            fields = [gr.Textbox(visible=False, elem_id=f"{prefix}-prompt-var-{i}", min_width=160)
                      for i in range(lib.MAX_VARIABLES)]

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def refresh(current: str | None, request: gr.Request) -> Any:
        prompts = lib.list_prompts(ctx, owner(request))
        ids = {p.id for p in prompts}
        return gr.Dropdown(choices=[(p.name, p.id) for p in prompts], value=current if current in ids else None)

    @ui_errors
    def show_fields(pid: str | None, request: gr.Request) -> list[Any]:
        names = lib.get_prompt(ctx, owner(request), pid).variables if pid else ()
        return [gr.Textbox(visible=i < len(names), label=names[i] if i < len(names) else "", value="")
                for i in range(lib.MAX_VARIABLES)]

    @ui_errors
    def do_insert(request: gr.Request, pid: str | None, current: str, *values: str) -> str:  # Request first: *values
        if not pid:
            raise gr.Error("Pick a saved prompt first (make one in the Prompts tab).")
        prompt = lib.get_prompt(ctx, owner(request), pid)
        text = lib.fill(prompt.text, dict(zip(prompt.variables, values, strict=False)))
        return f"{current.rstrip()}\n\n{text}" if (current or "").strip() else text

    private = {"api_visibility": "private"}
    # the list is read afresh when the picker opens (prompts are edited in another tab) and on focus
    accordion.expand(refresh, choice, choice, **FAST, **private)
    choice.focus(refresh, choice, choice, **FAST, **private)
    choice.change(show_fields, choice, fields, **FAST, **private)
    insert.click(do_insert, [choice, target, *fields], target, **FAST, **private)
