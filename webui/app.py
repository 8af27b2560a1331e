"""build_app(ctx) -> gr.Blocks: the workspaces as tabs. The only layer that knows Gradio."""

from __future__ import annotations

import gradio as gr

from .services.context import AppContext
from .tabs import chat, models

TITLE = "AIGC Studio"
CSS = """
#chat-alternatives { text-align: center; margin: auto 0; }
#chat-notice p { color: var(--body-text-color-subdued); font-size: 0.9em; }
"""


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"## {TITLE}", elem_id="studio-title")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat.build(ctx)
            with gr.Tab("Models", id="models"):
                models.build(ctx)
    return demo
