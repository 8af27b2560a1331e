"""The Image workspace: sample, interpolate, reconstruct (VAE) and read PNG info.

Every handler calls `webui.services.images`; files shown here are copies in Gradio's cache of
the PNGs the service saved, so the data folder is never served directly.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder

from ..errors import ui_errors
from ..services import images as svc
from ..services import png as pngmeta
from ..services.context import AppContext
from . import FAST, image_paint

RANDOM = "random"


def served(path: Any) -> str:
    """A copy of a saved file in Gradio's cache (byte for byte), safe to hand to the browser."""
    return save_file_to_cache(path, get_upload_folder())


def gallery_items(result: svc.ImageResult) -> list[tuple[str, str]]:
    return [(served(item.path), item.caption) for item in result.images]


def class_choices(ctx: AppContext, model: str | None, with_random: bool = True) -> list[str]:
    if not model:
        return []
    names = svc.class_choices(ctx, model)
    return ([RANDOM] if with_random else []) + names


def settings_visibility(ctx: AppContext, model: str | None) -> tuple[bool, bool]:
    """(truncation shown, temperature shown) for a model's parameters."""
    if not model:
        return False, False
    fields = ctx.registry.get(model).info.params.model_fields
    return "truncation" in fields, "temperature" in fields


def params_from(ctx: AppContext, model: str, truncation: float, temperature: float) -> dict[str, Any]:
    show_trunc, show_temp = settings_visibility(ctx, model)
    params: dict[str, Any] = {}
    if show_trunc:
        params["truncation"] = truncation if truncation and truncation > 0 else None
    if show_temp:
        params["temperature"] = temperature
    return params


def build(ctx: AppContext) -> None:
    models = svc.class_models(ctx)
    first = models[0] if models else None
    vae_models = [m for m in models if "reconstruct" in ctx.registry.get(m).info.capabilities]
    trunc_shown, temp_shown = settings_visibility(ctx, first)
    limit = ctx.settings.max_image_batch
    last_seed = gr.State(None)
    if not models:
        if svc.paint_models(ctx):
            image_paint.build(ctx)
            return
        gr.Markdown("No image generator is configured. Add a `gan`, `vae` or `diffusers` model to the settings file.")
        return

    with gr.Row() as class_row:  # the class-conditional models' settings (hidden on the Prompt tab)
        model = gr.Dropdown(models, value=first, label="Generator", scale=2, elem_id="image-model")
        truncation = gr.Slider(0, 3, value=0, step=0.05, label="Truncation (GAN; 0 = off)", visible=trunc_shown, scale=2,
                               info="Redraw latent values beyond ±t: lower = cleaner, less varied")
        temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature (VAE)", visible=temp_shown, scale=2,
                                info="Scale of the prior noise: 0 = the average digit of the class")
    with gr.Tabs() as tabs:
        with gr.Tab("Generate", id="image-generate"):
            with gr.Row():
                label = gr.Dropdown(class_choices(ctx, first), value=RANDOM, label="Class", scale=1, elem_id="image-class")
                seed = gr.Textbox(label="Seed", placeholder="empty = random", scale=2, elem_id="image-seed")
                dice = gr.Button("Random seed", scale=0, min_width=110, size="sm", elem_id="image-dice")
                reuse = gr.Button("Reuse last", scale=0, min_width=110, size="sm", elem_id="image-reuse")
                count = gr.Slider(1, limit, value=min(10, limit), step=1, label="Batch size", scale=2, elem_id="image-count")
            generate = gr.Button("Generate", variant="primary", elem_id="image-generate-button")
            notice = gr.Markdown(elem_id="image-notice")
            with gr.Row():
                images = gr.Gallery(label="Images (each PNG carries its parameters)", columns=5, height=360,
                                    elem_id="image-gallery", scale=3)
                grid = gr.Image(label="Grid", type="pil", format="png", height=360, elem_id="image-grid", scale=2)
        if svc.paint_models(ctx):
            with gr.Tab("Prompt", id="image-paint"):
                image_paint.build(ctx)
        with gr.Tab("Interpolate", id="image-interpolate"):
            with gr.Row():
                start_label = gr.Dropdown(class_choices(ctx, first), value=RANDOM, label="From class")
                start_seed = gr.Textbox(label="From seed", placeholder="empty = random")
                end_label = gr.Dropdown(class_choices(ctx, first), value=RANDOM, label="To class")
                end_seed = gr.Textbox(label="To seed", placeholder="empty = random")
                frames = gr.Slider(2, ctx.settings.max_interpolation_frames, value=min(10, ctx.settings.max_interpolation_frames),
                                   step=1, label="Frames")
            interp = gr.Button("Interpolate", variant="primary", elem_id="image-interpolate-button")
            interp_notice = gr.Markdown()
            strip = gr.Image(label="Strip", type="filepath", height=150, elem_id="image-strip")
            gif = gr.Image(label="Animation (GIF)", type="filepath", height=200, elem_id="image-gif")
        with gr.Tab("Reconstruct (VAE)", id="image-reconstruct"):
            if not vae_models:
                gr.Markdown("No VAE is configured; reconstruction needs one.")
            with gr.Row():
                drawing = gr.ImageEditor(
                    label="Upload or draw a digit", type="numpy", sources=["upload", "clipboard"], canvas_size=(280, 280),
                    brush=gr.Brush(default_size=22, colors=["#000000"], color_mode="fixed"), height=360,
                    elem_id="image-drawing")
                with gr.Column():
                    vae_model = gr.Dropdown(vae_models, value=vae_models[0] if vae_models else None, label="VAE")
                    recon_label = gr.Dropdown(["guess"] + class_choices(ctx, vae_models[0], False) if vae_models else [],
                                              value="guess", label="Class of your image")
                    recon = gr.Button("Reconstruct and re-render", variant="primary", elem_id="image-reconstruct-button")
                    recon_notice = gr.Markdown()
            recon_strip = gr.Image(label="Your image · reconstruction · as each class", type="filepath", height=150,
                                   elem_id="image-reconstruction")
        with gr.Tab("PNG info", id="image-pnginfo"):
            with gr.Row():
                upload = gr.File(label="A PNG made by the studio", file_types=["image"], type="filepath",
                                 elem_id="image-pnginfo-file")
                with gr.Column():
                    info_text = gr.Markdown(elem_id="image-pnginfo-text")
                    info_json = gr.JSON(label="Parameters")
                    again = gr.Button("Make it again", variant="primary", elem_id="image-pnginfo-again")
            again_image = gr.Image(label="Made again", type="filepath", elem_id="image-pnginfo-result")
            again_notice = gr.Markdown()

    # ------------------------------------------------------------ handlers
    def owner(request: gr.Request) -> str:
        return ctx.owner_for(getattr(request, "username", None))

    @ui_errors
    def pick_model(name: str) -> tuple[Any, ...]:
        show_trunc, show_temp = settings_visibility(ctx, name)
        choices = class_choices(ctx, name)
        same = gr.update(choices=choices, value=RANDOM)
        return gr.update(visible=show_trunc), gr.update(visible=show_temp), same, same, same

    @ui_errors
    def do_generate(name: str, cls: str, seed_text: str, n: float, trunc: float, temp: float,
                    request: gr.Request) -> tuple[Any, ...]:
        result = svc.generate(ctx, owner(request), name, cls, seed_text, int(n), params_from(ctx, name, trunc, temp))
        first_seed = result.images[0].seed
        return gallery_items(result), result.grid, result.notice, first_seed

    @ui_errors
    def do_interpolate(name: str, a_cls: str, a_seed: str, b_cls: str, b_seed: str, n: float, trunc: float,
                       temp: float, request: gr.Request) -> tuple[Any, ...]:
        result = svc.interpolate(ctx, owner(request), name, a_cls, a_seed, b_cls, b_seed, int(n),
                                 params_from(ctx, name, trunc, temp))
        item = result.images[0]
        start, end = item.params["start"], item.params["end"]
        return (served(item.path), served(item.gif_path), result.notice, str(start["seed"]), str(end["seed"]))

    @ui_errors
    def do_reconstruct(editor: Any, name: str, cls: str, request: gr.Request) -> tuple[Any, ...]:
        image = editor.get("composite") if isinstance(editor, dict) else editor
        if image is None or (hasattr(image, "size") and image.size == 0):
            raise gr.Error("Upload or draw a digit first.")
        result = svc.reconstruct(ctx, owner(request), name, image, None if cls == "guess" else cls)
        return served(result.images[0].path), result.notice

    @ui_errors
    def do_read_info(path: str | None) -> tuple[Any, ...]:
        if not path:
            return "", None
        meta = svc.png_info(path)
        return f"**{pngmeta.readable(meta)}**", meta

    @ui_errors
    def do_again(path: str | None, request: gr.Request) -> tuple[Any, ...]:
        if not path:
            raise gr.Error("Upload a PNG made by the studio first.")
        result = svc.regenerate(ctx, owner(request), svc.png_info(path))
        with open(path, "rb") as f:
            uploaded = pngmeta.sha256(f.read())
        same = "identical to" if result.images[0].content_hash == uploaded else "different from"
        note = f"The new PNG is byte-for-byte {same} the uploaded one; it is saved in the Gallery as a new image."
        return served(result.images[0].path), " ".join(x for x in (result.notice, note) if x)

    # ------------------------------------------------------------ wiring
    def show_class_row(evt: gr.SelectData) -> Any:
        return gr.update(visible=evt.value != "Prompt")

    tabs.select(show_class_row, None, class_row, **FAST, api_visibility="private")
    generate_kwargs = {"concurrency_id": "generate", "concurrency_limit": ctx.settings.generation_slots()}
    model.change(pick_model, model, [truncation, temperature, label, start_label, end_label], **FAST,
                 api_visibility="private")
    dice.click(lambda: str(svc.random_seed()), None, seed, **FAST, api_visibility="private")
    reuse.click(lambda s: "" if s is None else str(s), last_seed, seed, **FAST, api_visibility="private")
    generate.click(do_generate, [model, label, seed, count, truncation, temperature], [images, grid, notice, last_seed],
                   **generate_kwargs, api_name="generate_images")
    interp.click(do_interpolate, [model, start_label, start_seed, end_label, end_seed, frames, truncation, temperature],
                 [strip, gif, interp_notice, start_seed, end_seed], **generate_kwargs, api_name="interpolate_images")
    recon.click(do_reconstruct, [drawing, vae_model, recon_label], [recon_strip, recon_notice], **generate_kwargs,
                api_name="reconstruct_image")
    upload.change(do_read_info, upload, [info_text, info_json], **FAST, api_name="png_info")
    again.click(do_again, upload, [again_image, again_notice], **generate_kwargs, api_name="png_regenerate")
