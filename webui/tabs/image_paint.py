"""The Image workspace's Prompt tab: text-to-image, image-to-image and inpainting with the prompted
models (diffusers pipelines). Only the controls the selected model declares are shown: the modes it
can do, its samplers, its LoRAs. Progress shows step i of N and a cheap preview; Stop ends the
generation between two steps and nothing of it is saved.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from generators.base import CAP_IMAGE_TO_IMAGE, CAP_INPAINT, CAP_LORA, CAP_TEXT_TO_IMAGE, StepEvent

from ..errors import ui_errors
from ..services import images as svc
from ..services.context import AppContext
from . import FAST

MODES = {CAP_TEXT_TO_IMAGE: "Text to image", CAP_IMAGE_TO_IMAGE: "Image to image", CAP_INPAINT: "Inpaint"}


def served(path: Any) -> str:
    from .image import served as serve

    return serve(path)


def model_view(ctx: AppContext, name: str | None) -> dict[str, Any]:
    """What the selected model declares: modes, samplers, LoRAs and its recommended settings."""
    if not name:
        return {"modes": [], "schedulers": [], "loras": [], "defaults": {}}
    gen = svc.image_generator(ctx, name)
    caps = gen.info.capabilities
    return {"modes": [label for cap, label in MODES.items() if cap in caps], "schedulers": gen.schedulers(),
            "loras": gen.loras() if CAP_LORA in caps else [],
            "defaults": gen.defaults()}


def editor_parts(value: Any) -> tuple[Any, Any]:
    """(init image, mask) from the image editor: the uploaded background, and the painted strokes' alpha
    (None when nothing is painted)."""
    if not isinstance(value, dict):
        return value, None
    background = value.get("background")
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    if background is None:
        return None, None
    mask = None
    for layer in layers:
        alpha = layer.getchannel("A") if getattr(layer, "mode", "") == "RGBA" else None
        if alpha is not None and alpha.getbbox() is not None:
            mask = alpha if mask is None else _lighter(mask, alpha)
    return background, mask


def _lighter(a: Any, b: Any) -> Any:
    from PIL import ImageChops

    return ImageChops.lighter(a, b)


def build(ctx: AppContext) -> None:
    from .image import LABEL_CHOICES, MY_SETTING

    models = svc.paint_models(ctx)
    if not models:
        gr.Markdown("No prompted image model is configured. Add one to the settings file, e.g. "
                    "`{name: sd15, plugin: diffusers, options: {source: /path/to/pipeline-or-file.safetensors}}`.")
        return
    view = model_view(ctx, models[0])
    d = {"width": 512, "height": 512, "steps": 25, "guidance": 7.0, **view["defaults"]}
    side = ctx.settings.max_image_side
    with gr.Row():
        model = gr.Dropdown(models, value=models[0], label="Model", scale=2, elem_id="paint-model")
        mode = gr.Radio(view["modes"], value=view["modes"][0], label="Mode", scale=3, elem_id="paint-mode")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="paint-prompt",
                                placeholder="a watercolor fox in the snow  (A1111 <lora:name:0.8> tags work too)")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="paint-negative")
            editor = gr.ImageEditor(label="Init image (paint over the part to repaint for Inpaint)", type="pil",
                                    sources=["upload", "clipboard"], layers=False, visible=False, height=420,
                                    brush=gr.Brush(default_size=32, colors=["#ffffff"], color_mode="fixed"),
                                    elem_id="paint-editor")
            with gr.Row():
                width = gr.Slider(64, side, value=d["width"], step=8, label="Width", elem_id="paint-width")
                height = gr.Slider(64, side, value=d["height"], step=8, label="Height", elem_id="paint-height")
            with gr.Row():
                steps = gr.Slider(1, 150, value=d["steps"], step=1, label="Steps", elem_id="paint-steps")
                guidance = gr.Slider(0, 30, value=d["guidance"], step=0.5, label="CFG scale", elem_id="paint-guidance")
                strength = gr.Slider(0.05, 1, value=0.75, step=0.05, label="Denoising strength", visible=False,
                                     elem_id="paint-strength")
            with gr.Row():
                scheduler = gr.Dropdown(view["schedulers"], value=d.get("scheduler") or (view["schedulers"] or [None])[0],
                                        label="Sampler", elem_id="paint-scheduler")
                seed = gr.Textbox(label="Seed", placeholder="empty = random", elem_id="paint-seed")
                count = gr.Slider(1, min(8, ctx.settings.max_image_batch), value=1, step=1, label="Batch size",
                                  elem_id="paint-count")
                mark = gr.Radio(list(LABEL_CHOICES), value=MY_SETTING, label="Visible “AI-generated” label",
                                elem_id="paint-ai-label", info="A corner mark on the image; the default is in Verify")
            with gr.Row(visible=bool(view["loras"])) as lora_row:
                loras = gr.Dropdown(view["loras"], value=[], multiselect=True, label="LoRAs", elem_id="paint-loras")
                lora_weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="LoRA weight", elem_id="paint-lora-weight")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="paint-run")
                stop = gr.Button("Stop", variant="stop", elem_id="paint-stop")
        with gr.Column(scale=2):
            status = gr.Markdown(elem_id="paint-status")
            preview = gr.Image(label="Preview", type="numpy", height=240, interactive=False, elem_id="paint-preview")
            results = gr.Gallery(label="Images (each PNG carries A1111 parameters)", columns=2, height=360,
                                 elem_id="paint-gallery")

    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def pick_model(name: str) -> tuple[Any, ...]:
        v = model_view(ctx, name)
        dv = v["defaults"]
        return (gr.update(choices=v["modes"], value=v["modes"][0] if v["modes"] else None),
                gr.update(choices=v["schedulers"], value=dv.get("scheduler") or (v["schedulers"] or [None])[0]),
                gr.update(choices=v["loras"], value=[]), gr.update(visible=bool(v["loras"])),
                gr.update(value=dv.get("width", 512)), gr.update(value=dv.get("height", 512)),
                gr.update(value=dv.get("steps", 25)), gr.update(value=dv.get("guidance", 7.0)))

    def pick_mode(label: str) -> tuple[Any, ...]:
        uses_image = label in (MODES[CAP_IMAGE_TO_IMAGE], MODES[CAP_INPAINT])
        return gr.update(visible=uses_image), gr.update(visible=uses_image)

    @ui_errors
    def generate(name: str, mode_label: str, text: str, neg: str, edited: Any, w: float, h: float, n_steps: float,
                 cfg: float, denoise: float, sampler: str, seed_text: str, n: float, chosen: list[str] | None,
                 weight: float, marked: str | None = None, request: gr.Request = None) -> Any:
        init = mask = None
        if mode_label in (MODES[CAP_IMAGE_TO_IMAGE], MODES[CAP_INPAINT]):
            init, mask = editor_parts(edited)
            if init is None:
                raise gr.Error("init_image: upload an image to start from.")
            if mode_label == MODES[CAP_INPAINT] and mask is None:
                raise gr.Error("mask: paint over the part of the image to repaint.")
            if mode_label == MODES[CAP_IMAGE_TO_IMAGE]:
                mask = None
        params = {"prompt": text, "negative_prompt": neg, "width": int(w), "height": int(h), "steps": int(n_steps),
                  "guidance": cfg, "strength": denoise, "scheduler": sampler,
                  "loras": [{"name": lo, "weight": weight} for lo in chosen or []]}
        cancel = ctx.cancels.fresh("paint:" + (request.session_hash or ""))
        yield "Starting…", None, gr.update()
        for item in svc.paint_with_progress(ctx, owner(request), name, params, seed_text, int(n), init, mask, cancel,
                                            ai_label=LABEL_CHOICES.get(marked or MY_SETTING)):
            if isinstance(item, StepEvent):
                shown = item.preview[0] if item.preview is not None else gr.update()
                yield f"Step {item.step} of {item.total}", shown, gr.update()
            else:
                first = item.images[0]
                items = [(served(i.path), i.caption) for i in item.images]
                yield f"Done: {item.notice} · {first.width}×{first.height}", None, items

    @ui_errors
    def stop_paint(request: gr.Request) -> str:
        stopped = ctx.cancels.cancel("paint:" + (request.session_hash or ""))
        return "Stopping after this step…" if stopped else ""

    model.change(pick_model, model, [mode, scheduler, loras, lora_row, width, height, steps, guidance], **FAST,
                 api_visibility="private")
    mode.change(pick_mode, mode, [editor, strength], **FAST, api_visibility="private")
    run.click(generate, [model, mode, prompt, negative, editor, width, height, steps, guidance, strength, scheduler,
                         seed, count, loras, lora_weight, mark], [status, preview, results],
              concurrency_id="generate", concurrency_limit=ctx.settings.generation_slots(), api_name="paint_images")
    stop.click(stop_paint, None, status, **FAST, api_name="paint_stop")
