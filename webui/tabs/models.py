"""The Models view: every configured model, its state and memory; load, unload, quantization. The person's
own models (finished training jobs, `OWNER/NAME`) are listed to them too."""

from __future__ import annotations

from typing import Any

import gradio as gr

from generators.text.engine.quantizers import QUANTIZATION_CHOICES, quantization_help

from ..errors import ui_errors
from ..services.context import AppContext
from ..services.model_options import apply_options
from . import FAST

COLUMNS = ["Model", "Plugin", "Modality", "State", "Memory (MB)", "Device", "Precision", "Decoding", "Source"]


def model_rows(ctx: AppContext, viewer: str | None = None) -> list[list[Any]]:
    rows = []
    for d in ctx.registry.describe(owner=viewer):
        opts = d["options"]
        rows.append([
            d["name"],
            d["plugin"],
            d["modality"],
            "loaded" if d["loaded"] else "not loaded",
            round(d["memory_bytes"] / 2**20, 1),
            d.get("device") or opts.get("device", "-"),
            d.get("precision") or opts.get("quantization", "-"),  # what runs, and why when chosen automatically
            d.get("decode_loop") or "-",  # C++ / Python layer loop, or transformers' own (while loaded)
            opts.get("source", "-"),
        ])
    return rows


def settings_of(ctx: AppContext, name: str | None) -> tuple[str, str]:
    """(quantization, device) a model is configured with; "none"/"auto" for plugins without them."""
    opts = ctx.registry.get(name).options.model_dump() if name else {}
    return opts.get("quantization") or "none", opts.get("device") or "auto"


def build(ctx: AppContext) -> tuple[Any, gr.Dataframe]:
    """Lay out the Models view; returns (refresh function, table) so the app refreshes it on show."""
    names = ctx.registry.names()
    first = settings_of(ctx, names[0] if names else None)  # the radios start at the selected model's settings
    # wrapped, with room for the Precision cell: it says what runs and why, which is longer than a column
    table = gr.Dataframe(model_rows(ctx), headers=COLUMNS, interactive=False, label="Models", elem_id="models-table",
                         wrap=True, column_widths=["150px", "110px", "80px", "90px", "80px", "70px", "300px", "80px", "200px"])
    with gr.Row():
        model = gr.Dropdown(names, value=names[0] if names else None, label="Model", scale=2)
        quantization = gr.Radio(list(QUANTIZATION_CHOICES), value=first[0], label="Quantization",
                                info=quantization_help(),
                                scale=2, elem_id="models-quantization")
        device = gr.Radio(["auto", "cpu", "cuda"], value=first[1], label="Device", scale=2)
    with gr.Row():
        load = gr.Button("Load", variant="primary")
        unload = gr.Button("Unload")
        apply = gr.Button("Apply quantization / device")
        refresh = gr.Button("Refresh")
    status = gr.Markdown()

    def viewer(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    def admin(request: gr.Request) -> None:
        ctx.require_admin(viewer(request))

    def rows(request: gr.Request) -> list[list[Any]]:
        return model_rows(ctx, viewer(request))

    @ui_errors
    def do_load(name: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        admin(request)
        progress(0, desc=f"Loading {name}…")
        gen = ctx.registry.load(name, lambda msg: progress(0.5, desc=msg))
        return {table: model_rows(ctx, viewer(request)), status: f"**{name}** loaded ({gen.memory_bytes() / 2**20:.0f} MB)."}

    @ui_errors
    def do_unload(name: str, request: gr.Request) -> dict[Any, Any]:
        admin(request)
        ctx.registry.unload(name)
        return {table: model_rows(ctx, viewer(request)), status: f"**{name}** unloaded; its memory is released."}

    @ui_errors
    def do_apply(name: str, quant: str, dev: str, request: gr.Request, progress: gr.Progress = gr.Progress()) -> dict[Any, Any]:
        admin(request)
        applied = apply_options(ctx, name, lambda msg: progress(0.5, desc=msg), quantization=quant, device=dev)
        return {table: model_rows(ctx, viewer(request)), status: applied.message}

    def pick(name: str) -> dict[Any, Any]:
        quant, dev = settings_of(ctx, name)
        return {quantization: quant, device: dev}

    controls = [load, unload, apply, quantization, device]

    def read_only_unless_admin(request: gr.Request) -> dict[Any, Any]:
        allowed = ctx.is_admin(ctx.owner_for(getattr(request, "username", None)))
        note = "" if allowed else "You see the models read-only: only an admin can load, unload or reconfigure them."
        return {**{c: gr.update(interactive=allowed) for c in controls}, status: note}

    assert gr.context.Context.root_block is not None, "build() runs inside gr.Blocks()"
    gr.context.Context.root_block.load(read_only_unless_admin, None, [*controls, status], **FAST,
                                       api_visibility="private")

    outputs = [table, status]
    load.click(do_load, model, outputs, concurrency_id="generate", api_name="load_model")
    unload.click(do_unload, model, outputs, api_name="unload_model")
    apply.click(do_apply, [model, quantization, device], outputs, concurrency_id="generate", api_name="configure_model")
    refresh.click(rows, None, table, **FAST, api_name="list_models")
    model.change(pick, model, [quantization, device], **FAST, api_visibility="private")
    return rows, table
