"""The Evaluate workspace: the blind arena with its leaderboard, ratings per generator, rating by id."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import arena, ratings
from ..services.context import AppContext
from . import FAST

BOARD_COLUMNS = ["Model", "Rating (Bradley–Terry, Elo scale)", "95 % interval", "Rounds", "Wins (ties ½)"]
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def board_rows(standings: list[arena.Standing]) -> list[list[Any]]:
    return [[s.model, round(s.rating), f"{s.low:.0f} – {s.high:.0f}", s.battles, s.wins] for s in standings]


def board_plot(standings: list[arena.Standing]) -> Any:
    """Ratings as dots with their 95 % intervals as whiskers, best on top (PIL, no plotting library)."""
    from PIL import Image, ImageDraw

    rows = max(1, len(standings))
    width, left, right, top, step = 640, 170, 30, 30, 34
    image = Image.new("RGB", (width, top + rows * step + 30), "white")
    draw = ImageDraw.Draw(image)
    if not standings:
        draw.text((20, 20), "No votes yet: play a round in the arena.", fill=(90, 90, 90))
        return image
    lo = min(s.low for s in standings) - 20
    hi = max(s.high for s in standings) + 20

    def x(value: float) -> float:
        return left + (value - lo) / max(hi - lo, 1e-9) * (width - left - right)

    draw.line((x(1000), top - 10, x(1000), top + rows * step), fill=(200, 200, 200))
    draw.text((x(1000) - 14, top - 24), "1000", fill=(120, 120, 120))
    for i, s in enumerate(standings):
        y = top + i * step + step // 2
        draw.text((10, y - 6), s.model[:24], fill=(30, 30, 30))
        draw.line((x(s.low), y, x(s.high), y), fill=(31, 119, 180), width=3)
        for end in (s.low, s.high):
            draw.line((x(end), y - 6, x(end), y + 6), fill=(31, 119, 180), width=2)
        draw.ellipse((x(s.rating) - 5, y - 5, x(s.rating) + 5, y + 5), fill=(214, 39, 40))
        draw.text((x(s.high) + 6 if x(s.high) < width - 60 else x(s.low) - 40, y - 6), f"{s.rating:.0f}", fill=(30, 30, 30))
    return image

COLUMNS = ["Generator", "👍", "👎", "Ratings", "Share 👍", "Comments"]


def table(ctx: AppContext) -> list[list[Any]]:
    return [[r.generator, r.up, r.down, r.total, f"{r.share_up:.0%}", r.comments] for r in ratings.by_generator(ctx)]


def build(ctx: AppContext) -> Any:
    models = arena.text_models(ctx)
    battle_id = gr.State(None)
    with gr.Tab("Arena (blind)", id="arena"):
        gr.Markdown("One prompt, two text generators, answers side by side **without their names**. "
                    "Vote, then the names are shown. Every vote feeds the leaderboard.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=4, elem_id="arena-prompt")
            with gr.Column(scale=1, min_width=200):
                pick_a = gr.Dropdown(["random"] + models, value="random", label="Model A")
                pick_b = gr.Dropdown(["random"] + models, value="random", label="Model B")
        with gr.Row():
            tokens = gr.Slider(16, 512, value=128, step=16, label="Max new tokens", scale=2)
            temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature", scale=2)
            go = gr.Button("Ask both", variant="primary", scale=1, elem_id="arena-go")
        with gr.Row(equal_height=True):
            answer_a = gr.Textbox(label="A", lines=10, max_lines=20, interactive=False, elem_id="arena-a")
            answer_b = gr.Textbox(label="B", lines=10, max_lines=20, interactive=False, elem_id="arena-b")
        with gr.Row():
            vote_buttons = {v: gr.Button(label, elem_id=f"arena-vote-{v}") for v, label in VOTE_LABELS.items()}
        reveal = gr.Markdown(elem_id="arena-reveal")
        with gr.Row(equal_height=False):
            leader = gr.Dataframe(board_rows(arena.leaderboard(ctx)), headers=BOARD_COLUMNS, interactive=False,
                                  label="Leaderboard", elem_id="arena-leaderboard", scale=3)
            leader_plot = gr.Image(board_plot(arena.leaderboard(ctx)), type="pil", label="Ratings with 95 % intervals",
                                   scale=2, elem_id="arena-plot")

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def ask(text: str, a: str, b: str, n: float, temp: float, request: gr.Request) -> Any:
        who = owner(request)
        battle = arena.start(ctx, who, text, a, b)
        yield battle.id, "", "", "Answering… (the names are shown after your vote)"
        cancel = ctx.cancels.fresh(request.session_hash or "")
        view = battle
        for view in arena.stream(ctx, who, battle.id, {"max_new_tokens": int(n), "temperature": temp}, cancel):
            yield battle.id, view.text_a, view.text_b, gr.update()
        yield battle.id, view.text_a, view.text_b, "Both answers are in. Which is better?"

    def voter(choice: str) -> Any:
        @ui_errors
        def handler(bid: str | None, request: gr.Request) -> tuple[Any, ...]:
            if not bid:
                raise gr.Error("Ask both models first.")
            view = arena.vote(ctx, owner(request), bid, choice)
            standings = arena.leaderboard(ctx)
            text = (f"You voted **{VOTE_LABELS[choice]}**. A was **{view.model_a}**, B was **{view.model_b}**.")
            return text, board_rows(standings), board_plot(standings)

        return handler

    go.click(ask, [prompt, pick_a, pick_b, tokens, temperature], [battle_id, answer_a, answer_b, reveal],
             concurrency_id="generate", concurrency_limit=ctx.settings.concurrency, api_name="arena_ask")
    for choice, button in vote_buttons.items():
        button.click(voter(choice), battle_id, [reveal, leader, leader_plot], **FAST, api_name=f"arena_vote_{choice}")

    def refresh_board() -> tuple[Any, Any]:
        standings = arena.leaderboard(ctx)
        return board_rows(standings), board_plot(standings)

    with gr.Tab("Ratings", id="ratings"):
        gr.Markdown("Ratings of chat replies, story passages and images, per generator (all users; counts only). "
                    "Rate with 👍/👎 under a chat reply, *Rate: good/bad* in the Story (Edit a passage) and Gallery "
                    "tabs, or here by id with a comment.")
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
        stored = ratings.rate(ctx, owner(request), k, (tid or "").strip(), None if v == "clear" else v, text)
        return table(ctx), {1: "Saved 👍.", -1: "Saved 👎.", 0: "Rating removed."}[stored]

    rate.click(do_rate, [kind, target, value, comment], [board, result], **FAST, api_name="rate")
    refresh.click(lambda: table(ctx), None, board, **FAST, api_name="ratings_table")

    def refresh_all() -> tuple[Any, ...]:
        return (table(ctx), *refresh_board())

    return refresh_all, [board, leader, leader_plot]
