"""The Evaluate workspace: the blind arena with its leaderboard, ratings per generator, rating by id.

A person's own models (finished training jobs) join their arena pickers and metrics choices when the page
loads (`webui.app.own_models`); the shared tables show them to that person only."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import ui_errors
from ..services import arena, metrics, presets, ratings
from ..services.context import AppContext
from ..services.own_models import model_owner
from . import FAST

BOARD_COLUMNS = ["Model", "Rating", "95 % interval", "Rounds", "Wins (ties ½)"]
MIN_ROUNDS = 5  # a model with fewer rounds is listed, but not ranked: its interval means nothing yet
BOARD_NOTE = (f"Rating: a Bradley–Terry fit on the Elo scale (1000 = average), with a 95 % bootstrap interval. "
              f"A model is ranked after {MIN_ROUNDS} rounds; before that its row says how many it has.")
VOTE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


METRIC_COLUMNS = ["Generator", "Metric", "Value", "Data", "Measured"]
METRIC_NOTES = {"perplexity": "lower is better (per token of that model)", "bits_per_char": "lower is better",
                "bleu": "0–100, higher is better", "rouge_l": "0–100, higher is better",
                "class_accuracy": "higher is better", "frechet": "lower is better"}


def metric_rows(found: list[metrics.Measured]) -> list[list[Any]]:
    return [[m.generator, m.metric, round(m.value, 4), m.dataset, m.created_at] for m in found]


def history_plot(found: list[metrics.Measured], metric: str) -> Any:
    """One line per generator: the metric over successive measurements (PIL)."""
    from PIL import Image, ImageDraw

    series: dict[str, list[float]] = {}
    for m in found:
        if m.metric == metric:
            series.setdefault(m.generator, []).append(m.value)
    width, height, left, top, bottom = 640, 260, 60, 24, 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), f"{metric} ({METRIC_NOTES.get(metric, '')})", fill=(30, 30, 30))
    values = [v for vs in series.values() for v in vs]
    if not values:
        draw.text((left, height // 2), "No measurements yet: run the metrics.", fill=(90, 90, 90))
        return image
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    longest = max(len(v) for v in series.values())
    colors = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (i / max(longest - 1, 1)) * (width - left - 130)
        return x, top + (1 - (v - lo) / (hi - lo)) * (height - top - bottom)

    draw.rectangle((left, top, width - 130, height - bottom), outline=(200, 200, 200))
    draw.text((4, top - 6), f"{hi:.3g}", fill=(90, 90, 90))
    draw.text((4, height - bottom - 6), f"{lo:.3g}", fill=(90, 90, 90))
    for c, (name, vs) in enumerate(sorted(series.items())):
        color = colors[c % len(colors)]
        points = [xy(i, v) for i, v in enumerate(vs)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        draw.text((width - 122, top + 14 * c), name[:18], fill=color)
    draw.text((left, height - bottom + 8), "measurement 1 … " + str(longest), fill=(90, 90, 90))
    return image


def ranked(standing: arena.Standing) -> bool:
    return standing.battles >= MIN_ROUNDS


def board_rows(standings: list[arena.Standing]) -> list[list[Any]]:
    """Ranked models first (best first); the others say they need more votes instead of a fake interval."""
    rows = [[s.model, round(s.rating), f"{s.low:.0f} – {s.high:.0f}", s.battles, s.wins] for s in standings if ranked(s)]
    rows += [[s.model, "—", f"too few votes ({s.battles} of {MIN_ROUNDS})", s.battles, s.wins]
             for s in standings if not ranked(s)]
    return rows


def board_plot(standings: list[arena.Standing]) -> Any:
    """Ratings as dots with their 95 % intervals as whiskers, best on top (PIL, no plotting library)."""
    from PIL import Image, ImageDraw, ImageFont

    waiting = [s for s in standings if not ranked(s)]
    standings = [s for s in standings if ranked(s)]
    rows = max(1, len(standings))
    width, left, right, top, step = 900, 230, 40, 40, 44
    font = ImageFont.load_default(size=16)  # readable when the page scales the image down
    image = Image.new("RGB", (width, top + rows * step + 30), "white")
    draw = ImageDraw.Draw(image)
    if not standings:
        most = max((s.battles for s in waiting), default=0)
        text = (f"Too few votes to rank yet: at most {most} round(s) per model, a ranking needs {MIN_ROUNDS}."
                if waiting else "No votes yet: play a round in the arena.")
        draw.text((20, 20), text, fill=(90, 90, 90), font=font)
        return image
    lo = min(s.low for s in standings) - 20
    hi = max(s.high for s in standings) + 20

    def x(value: float) -> float:
        return left + (value - lo) / max(hi - lo, 1e-9) * (width - left - right)

    draw.line((x(1000), top - 10, x(1000), top + rows * step), fill=(200, 200, 200))
    draw.text((x(1000) - 14, top - 24), "1000", fill=(120, 120, 120), font=font)
    for i, s in enumerate(standings):
        y = top + i * step + step // 2
        draw.text((10, y - 9), s.model[:24], fill=(30, 30, 30), font=font)
        draw.line((x(s.low), y, x(s.high), y), fill=(31, 119, 180), width=3)
        for end in (s.low, s.high):
            draw.line((x(end), y - 6, x(end), y + 6), fill=(31, 119, 180), width=2)
        draw.ellipse((x(s.rating) - 5, y - 5, x(s.rating) + 5, y + 5), fill=(214, 39, 40))
        at = x(s.high) + 8 if x(s.high) < width - 70 else x(s.low) - 50
        draw.text((at, y - 9), f"{s.rating:.0f}", fill=(30, 30, 30), font=font)
    return image

COLUMNS = ["Generator", "👍", "👎", "Ratings", "Share 👍", "Comments"]


def table(ctx: AppContext, viewer: str | None = None) -> list[list[Any]]:
    return [[r.generator, r.up, r.down, r.total, f"{r.share_up:.0%}", r.comments]
            for r in ratings.by_generator(ctx, viewer)]


def preset_choices(items: list[presets.Preset]) -> list[tuple[str, str]]:
    return [("— none —", ""), *((p.label, p.name) for p in items)]


def build(ctx: AppContext) -> Any:
    models = arena.text_models(ctx)
    battle_id = gr.State(None)
    with gr.Tab("Arena (blind)", id="arena"):
        gr.Markdown("One prompt, two text generators, answers side by side **without their names**. "
                    "Vote, then the names are shown. Every vote feeds the leaderboard.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=4, elem_id="arena-prompt")
            with gr.Column(scale=1, min_width=200):
                pick_a = gr.Dropdown(["random"] + models, value="random", label="Model A", elem_id="arena-model-a")
                pick_b = gr.Dropdown(["random"] + models, value="random", label="Model B", elem_id="arena-model-b")
        with gr.Row():
            tokens = gr.Slider(16, 512, value=128, step=16, label="Max new tokens", scale=2)
            temperature = gr.Slider(0, 1.5, value=0.7, step=0.05, label="Temperature", scale=2)
            preset = gr.Dropdown(choices=preset_choices(presets.builtin_presets()), value="", label="Preset", scale=2,
                                 allow_custom_value=True,
                                 info="its sampler settings for both; the two sliders still apply",
                                 elem_id="arena-preset")
            go = gr.Button("Ask both", variant="primary", scale=1, elem_id="arena-go")
        with gr.Row(equal_height=True):
            answer_a = gr.Textbox(label="A", lines=10, max_lines=20, interactive=False, elem_id="arena-a")
            answer_b = gr.Textbox(label="B", lines=10, max_lines=20, interactive=False, elem_id="arena-b")
        with gr.Row():
            vote_buttons = {v: gr.Button(label, elem_id=f"arena-vote-{v}") for v, label in VOTE_LABELS.items()}
        reveal = gr.Markdown(elem_id="arena-reveal")
        gr.Markdown(BOARD_NOTE, elem_id="arena-board-note")
        leader = gr.Dataframe(board_rows(arena.leaderboard(ctx)), headers=BOARD_COLUMNS, interactive=False,
                              label="Leaderboard", elem_id="arena-leaderboard", wrap=True,
                              column_widths=["30%", "12%", "28%", "12%", "18%"])
        leader_plot = gr.Image(board_plot(arena.leaderboard(ctx)), type="pil", label="Ratings with 95 % intervals",
                               elem_id="arena-plot", height=260)

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def ask(text: str, a: str, b: str, n: float, temp: float, preset_name: str | None, request: gr.Request) -> Any:
        who = owner(request)
        battle = arena.start(ctx, who, text, a, b)
        yield battle.id, "", "", "Answering… (the names are shown after your vote)"
        cancel = ctx.cancels.fresh(request.session_hash or "")
        view = battle
        for view in arena.stream(ctx, who, battle.id, {"max_new_tokens": int(n), "temperature": temp}, cancel,
                                 preset=preset_name or None):
            yield battle.id, view.text_a, view.text_b, gr.update()
        yield battle.id, view.text_a, view.text_b, "Both answers are in. Which is better?"

    def voter(choice: str) -> Any:
        @ui_errors
        def handler(bid: str | None, request: gr.Request) -> tuple[Any, ...]:
            if not bid:
                raise gr.Error("Ask both models first.")
            who = owner(request)
            view = arena.vote(ctx, who, bid, choice)
            standings = arena.leaderboard(ctx, who)
            text = (f"You voted **{VOTE_LABELS[choice]}**. A was **{view.model_a}**, B was **{view.model_b}**.")
            return text, board_rows(standings), board_plot(standings)

        return handler

    @ui_errors
    def pick_preset(name: str | None, request: gr.Request) -> dict[Any, Any]:
        """A preset sets the two sliders to its values (the rest of its settings apply as they are)."""
        if not name:
            return {}
        chosen = presets.get_preset(ctx, owner(request), name).params
        return {temperature: chosen["temperature"], tokens: max(16, min(512, chosen["max_new_tokens"]))}

    def list_presets(current: str | None, request: gr.Request) -> Any:
        return gr.Dropdown(choices=preset_choices(presets.list_presets(ctx, owner(request))), value=current or "")

    preset.input(pick_preset, preset, [temperature, tokens], **FAST, api_visibility="private")
    preset.focus(list_presets, preset, preset, **FAST, api_visibility="private")
    go.click(ask, [prompt, pick_a, pick_b, tokens, temperature, preset], [battle_id, answer_a, answer_b, reveal],
             concurrency_id="generate", concurrency_limit=ctx.settings.generation_slots(), api_name="arena_ask")
    for choice, button in vote_buttons.items():
        button.click(voter(choice), battle_id, [reveal, leader, leader_plot], **FAST, api_name=f"arena_vote_{choice}")

    def refresh_board(who: str) -> tuple[Any, Any]:
        standings = arena.leaderboard(ctx, who)
        return board_rows(standings), board_plot(standings)

    with gr.Tab("Metrics", id="metrics"):
        gr.Markdown("Perplexity and bits per character on a held-out text, BLEU and ROUGE-L on a small prompt set "
                    "with references, classifier accuracy and Fréchet distance for the digit generators. Every run is "
                    "stored with its date and versions.")
        with gr.Row():
            pick = gr.CheckboxGroup(ctx.registry.names(), value=ctx.registry.names(), label="Generators", scale=3,
                                    elem_id="metrics-models")
            with gr.Column(scale=1, min_width=160):
                run_metrics = gr.Button("Run the metrics", variant="primary", elem_id="metrics-run")
                stop_metrics = gr.Button("Stop", variant="stop", elem_id="metrics-stop")
        metrics_status = gr.Markdown(elem_id="metrics-status")
        latest_table = gr.Dataframe(metric_rows(metrics.latest(ctx)), headers=METRIC_COLUMNS, interactive=False,
                                    label="Latest values", elem_id="metrics-latest")
        with gr.Row():
            which = gr.Dropdown(list(METRIC_NOTES), value="bits_per_char", label="History of", scale=1)
            plot = gr.Image(history_plot(metrics.history(ctx), "bits_per_char"), type="pil", label="History", scale=3,
                            elem_id="metrics-plot")

    @ui_errors
    def do_metrics(chosen: list[str], metric: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Any:
        who = owner(request)
        if not chosen:
            raise gr.Error("Pick at least one generator.")
        if any(model_owner(ctx, m) is None for m in chosen):  # results of the shared models are seen by everyone
            ctx.require_admin(who, "measure the shared models (your own models you may measure: pick only those)")
        cancel = ctx.cancels.fresh("metrics:" + (request.session_hash or ""))
        found = metrics.run(ctx, chosen, lambda f, m: progress(f, desc=m), cancel, owner=who)
        every = metrics.history(ctx, viewer=who)
        return (metric_rows(metrics.latest(ctx, who)), history_plot(every, metric),
                f"Measured {len(found)} value(s) for {len(chosen)} generator(s).")

    def stop_run(request: gr.Request) -> str:
        ctx.cancels.cancel("metrics:" + (request.session_hash or ""))
        return "Stopping after the current step…"

    run_metrics.click(do_metrics, [pick, which], [latest_table, plot, metrics_status], concurrency_id="generate",
                      concurrency_limit=ctx.settings.generation_slots(), api_name="run_metrics")
    stop_metrics.click(stop_run, None, metrics_status, **FAST, api_name="stop_metrics")
    def show_history(metric: str, request: gr.Request) -> Any:
        return history_plot(metrics.history(ctx, viewer=owner(request)), metric)

    which.change(show_history, which, plot, **FAST, api_visibility="private")

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
        who = owner(request)
        stored = ratings.rate(ctx, who, k, (tid or "").strip(), None if v == "clear" else v, text)
        return table(ctx, who), {1: "Saved 👍.", -1: "Saved 👎.", 0: "Rating removed."}[stored]

    rate.click(do_rate, [kind, target, value, comment], [board, result], **FAST, api_name="rate")
    def ratings_table(request: gr.Request) -> list[list[Any]]:
        return table(ctx, owner(request))

    refresh.click(ratings_table, None, board, **FAST, api_name="ratings_table")

    def refresh_all(request: gr.Request) -> tuple[Any, ...]:
        """What the person may see: the shared rows plus those of their own models."""
        who = owner(request)
        return (table(ctx, who), *refresh_board(who), metric_rows(metrics.latest(ctx, who)))

    return refresh_all, [board, leader, leader_plot, latest_table]
