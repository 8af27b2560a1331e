"""The Evaluate workspace: ratings per generator, and rating any output by id (also the API for it)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import ratings
from ..services.context import AppContext
from . import FAST

COLUMNS = ["Generator", "👍", "👎", "Ratings", "Share 👍", "Comments"]


def table(ctx: AppContext) -> list[list[Any]]:
    return [[r.generator, r.up, r.down, r.total, f"{r.share_up:.0%}", r.comments] for r in ratings.by_generator(ctx)]


def build(ctx: AppContext) -> Any:
    gr.Markdown("Ratings of chat replies, story passages and images, per generator (all users; counts only). "
                "Rate with 👍/👎 under a chat reply, *Rate: good/bad* in the Story (Edit a passage) and Gallery tabs, "
                "or here by id with a comment.")
    board = gr.Dataframe(table(ctx), headers=COLUMNS, interactive=False, label="Ratings per generator",
                         elem_id="evaluate-ratings")
    with gr.Accordion("Rate an output by id, with a comment", open=False):
        with gr.Row():
            kind = gr.Dropdown(list(ratings.KINDS), value="image", label="Kind")
            target = gr.Textbox(label="Id", max_lines=1)
            value = gr.Radio(["up", "down", "clear"], value="up", label="Rating")
        comment = gr.Textbox(label="Comment (optional)", lines=2)
        rate = gr.Button("Save rating", variant="primary")
        result = gr.Markdown()
    refresh = gr.Button("Refresh", size="sm")

    @ui_errors
    def do_rate(k: str, tid: str, v: str, text: str, request: gr.Request) -> tuple[Any, str]:
        owner = ctx.owner_for(getattr(request, "username", None))
        stored = ratings.rate(ctx, owner, k, (tid or "").strip(), None if v == "clear" else v, text)
        return table(ctx), {1: "Saved 👍.", -1: "Saved 👎.", 0: "Rating removed."}[stored]

    rate.click(do_rate, [kind, target, value, comment], [board, result], **FAST, api_name="rate")
    refresh.click(lambda: table(ctx), None, board, **FAST, api_name="ratings_table")
    return (lambda: table(ctx)), board
