"""The Image workspace: sample, interpolate, reconstruct (VAE) and read PNG info.

Every handler calls `webui.services.images`; files shown here are copies in Gradio's cache of
the PNGs the service saved, so the data folder is never served directly.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.processing_utils import save_bytes_to_cache, save_file_to_cache
from gradio.utils import get_upload_folder

from generators.base import CAP_STEPS, CAP_TRAJECTORY, StepControl

from ..errors import ui_errors
from ..services import images as svc
from ..services import png as pngmeta
from ..services.context import AppContext
from . import FAST, image_paint

RANDOM = "random"


def served(path: Any) -> str:
    """A copy of a saved file in Gradio's cache (byte for byte), safe to hand to the browser."""
    return save_file_to_cache(path, get_upload_folder())


def served_view(ctx: AppContext, result: svc.ImageResult) -> str:
    """The result's display picture (a batch grid, a labelled strip) as a signed PNG in Gradio's cache:
    what a person saves from the page carries content credentials too."""
    return save_bytes_to_cache(svc.signed_view(ctx, result), "grid.png", get_upload_folder())


def gallery_items(result: svc.ImageResult) -> list[tuple[str, str]]:
    return [(served(item.path), item.caption) for item in result.images]


def class_choices(ctx: AppContext, model: str | None, with_random: bool = True) -> list[str]:
    if not model:
        return []
    names = svc.class_choices(ctx, model)
    return ([RANDOM] if with_random else []) + names


SETTINGS = ("truncation", "temperature", "steps", "guidance", "scheduler")


def settings_visibility(ctx: AppContext, model: str | None) -> dict[str, bool]:
    """Which of the per-model settings (truncation, temperature, steps, guidance, scheduler) a model's
    parameters have: only those are shown."""
    fields = ctx.registry.get(model).info.params.model_fields if model else {}
    return {name: name in fields for name in SETTINGS}


def param_default(ctx: AppContext, model: str | None, name: str, fallback: Any) -> Any:
    """The plugin's own default of a setting (so the page starts where the API does)."""
    fields = ctx.registry.get(model).info.params.model_fields if model else {}
    return fields[name].default if name in fields else fallback


def scheduler_choices(ctx: AppContext, model: str | None) -> list[str]:
    if not model or ctx.registry.get(model).info.modality != "image":
        return []
    return svc.image_generator(ctx, model).schedulers()


def all_schedulers(ctx: AppContext, models: list[str]) -> list[str]:
    """Every scheduler name of the configured models (an API caller may pick any; the model checks it)."""
    return list(dict.fromkeys(name for m in models for name in scheduler_choices(ctx, m)))


def params_from(ctx: AppContext, model: str, truncation: float, temperature: float, steps: float | None = None,
                guidance: float | None = None, scheduler: str | None = None) -> dict[str, Any]:
    shown = settings_visibility(ctx, model)
    params: dict[str, Any] = {}
    if shown["truncation"]:
        params["truncation"] = truncation if truncation and truncation > 0 else None
    if shown["temperature"]:
        params["temperature"] = temperature
    if shown["steps"] and steps is not None:
        params["steps"] = int(steps)
    if shown["guidance"] and guidance is not None:
        params["guidance"] = guidance
    if shown["scheduler"] and scheduler:
        params["scheduler"] = scheduler
    return params


MY_SETTING = "my setting"
LABEL_CHOICES = {MY_SETTING: None, "on": True, "off": False}


def step_control(ctx: AppContext, request: gr.Request, progress: gr.Progress, what: str) -> StepControl:
    """Step i of N on the page's progress bar; the Stop button of this browser session ends between two steps."""
    cancel = ctx.cancels.fresh(cancel_key(request))

    def on_step(event: Any) -> None:
        progress((event.step, event.total), desc=f"{what}: step {event.step} of {event.total}")

    return StepControl(on_step=on_step, cancel=cancel, preview_every=0)


def cancel_key(request: gr.Request) -> str:
    return "image:" + (getattr(request, "session_hash", None) or "")


def build(ctx: AppContext) -> None:
    models = svc.class_models(ctx)
    first = models[0] if models else None
    vae_models = [m for m in models if "reconstruct" in ctx.registry.get(m).info.capabilities]
    shown = settings_visibility(ctx, first)
    diffusion_models = [m for m in models if CAP_TRAJECTORY in ctx.registry.get(m).info.capabilities]
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
        truncation = gr.Slider(0, 3, value=0, step=0.05, label="Truncation (GAN; 0 = off)", visible=shown["truncation"],
                               scale=2, info="Redraw latent values beyond ±t: lower = cleaner, less varied")
        temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="Temperature (VAE)", visible=shown["temperature"], scale=2,
                                info="Scale of the prior noise: 0 = the average digit of the class")
        steps = gr.Slider(1, 100, value=param_default(ctx, first, "steps", 25), step=1, label="Steps", visible=shown["steps"],
                          scale=2, elem_id="image-steps",
                          info="Denoising steps: more = slower, a little cleaner")
        guidance = gr.Slider(0, 10, value=param_default(ctx, first, "guidance", 2.0), step=0.1, label="Guidance (CFG)",
                             visible=shown["guidance"], scale=2,
                             elem_id="image-guidance", info="1 = the class alone, 0 = ignore it, higher = more typical")
        scheduler = gr.Dropdown(scheduler_choices(ctx, first) or all_schedulers(ctx, models),
                                value=(scheduler_choices(ctx, first) or all_schedulers(ctx, models) or [None])[0],
                                allow_custom_value=True, label="Scheduler", visible=shown["scheduler"], scale=1,
                                elem_id="image-scheduler")
        mark = gr.Radio(list(LABEL_CHOICES), value=MY_SETTING, label="Visible “AI-generated” label", scale=1,
                        elem_id="image-ai-label", info="A corner mark on the image; the default is in Verify")
    with gr.Tabs() as tabs:
        with gr.Tab("Generate", id="image-generate"):
            with gr.Row():
                label = gr.Dropdown(class_choices(ctx, first), value=RANDOM, label="Class", scale=1, elem_id="image-class")
                seed = gr.Textbox(label="Seed", placeholder="empty = random", scale=2, elem_id="image-seed")
                dice = gr.Button("Random seed", scale=0, min_width=110, size="sm", elem_id="image-dice")
                reuse = gr.Button("Reuse last", scale=0, min_width=110, size="sm", elem_id="image-reuse")
                count = gr.Slider(1, limit, value=min(10, limit), step=1, label="Batch size", scale=2, elem_id="image-count")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="image-generate-button", scale=4)
                stop = gr.Button("Stop", variant="stop", elem_id="image-stop", scale=1)
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
        with gr.Tab("Denoising trajectory", id="image-trajectory"):
            if not diffusion_models:
                gr.Markdown("No diffusion model is configured; the trajectory needs one.")
            gr.Markdown("How a diffusion model draws: the top row is the image x_t after each shown step, from pure "
                        "noise (step 0) to the finished digit; the bottom row is the model's guess of the finished "
                        "image at that step.")
            with gr.Row():
                traj_model = gr.Dropdown(diffusion_models, value=diffusion_models[0] if diffusion_models else None,
                                         label="Diffusion model", elem_id="image-trajectory-model")
                traj_label = gr.Dropdown(class_choices(ctx, diffusion_models[0]) if diffusion_models else [], value=RANDOM,
                                         label="Class", elem_id="image-trajectory-class")
                traj_seed = gr.Textbox(label="Seed", placeholder="empty = random", elem_id="image-trajectory-seed")
                traj_frames = gr.Slider(2, ctx.settings.max_interpolation_frames,
                                        value=min(9, ctx.settings.max_interpolation_frames), step=1,
                                        label="Frames (evenly spread steps)", elem_id="image-trajectory-frames")
                traj_at = gr.Textbox(label="Or these steps", placeholder="e.g. 0, 5, 10, 20, 25",
                                     elem_id="image-trajectory-steps")
            with gr.Row():
                first_diffusion = diffusion_models[0] if diffusion_models else None
                traj_steps = gr.Slider(1, 100, value=param_default(ctx, first_diffusion, "steps", 25), step=1, label="Steps",
                                       elem_id="image-trajectory-nsteps")
                traj_guidance = gr.Slider(0, 10, value=param_default(ctx, first_diffusion, "guidance", 2.0), step=0.1,
                                          label="Guidance (CFG)",
                                          elem_id="image-trajectory-guidance")
                traj_scheduler = gr.Dropdown(scheduler_choices(ctx, first_diffusion),
                                             value=(scheduler_choices(ctx, first_diffusion) or [None])[0],
                                             allow_custom_value=True, label="Scheduler",
                                             elem_id="image-trajectory-scheduler")
            traj_button = gr.Button("Show the trajectory", variant="primary", elem_id="image-trajectory-button")
            traj_notice = gr.Markdown(elem_id="image-trajectory-notice")
            traj_strip = gr.Image(label="x_t (top) · estimate of the finished image (bottom); the PNG with its parameters is "
                                        "in the Gallery", type="pil", format="png", height=260, elem_id="image-trajectory-strip")
            traj_gif = gr.Image(label="Animation (GIF): x_t · estimate", type="filepath", height=200,
                                elem_id="image-trajectory-gif")
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
                upload = gr.File(label="A PNG made by the studio (or by the Stable Diffusion web UI)", file_types=["image"],
                                 type="filepath",
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
        visible = settings_visibility(ctx, name)
        choices = class_choices(ctx, name)
        same = gr.update(choices=choices, value=RANDOM)
        schedulers = scheduler_choices(ctx, name) or all_schedulers(ctx, models)
        return (gr.update(visible=visible["truncation"]), gr.update(visible=visible["temperature"]),
                gr.update(visible=visible["steps"]), gr.update(visible=visible["guidance"]),
                gr.update(visible=visible["scheduler"], choices=schedulers, value=schedulers[0] if schedulers else None),
                same, same, same)

    @ui_errors
    def do_generate(name: str, cls: str, seed_text: str, n: float, trunc: float, temp: float, n_steps: float | None = None,
                    cfg: float | None = None, sched: str | None = None, marked: str | None = None,
                    request: gr.Request = None,
                    progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        gen = ctx.registry.get(name)
        control = step_control(ctx, request, progress, "Denoising") if CAP_STEPS in gen.info.capabilities else None
        result = svc.generate(ctx, owner(request), name, cls, seed_text, int(n),
                              params_from(ctx, name, trunc, temp, n_steps, cfg, sched), control=control,
                              ai_label=LABEL_CHOICES.get(marked or MY_SETTING))
        first_seed = result.images[0].seed
        return gallery_items(result), served_view(ctx, result), result.notice, first_seed

    @ui_errors
    def do_trajectory(name: str, cls: str, seed_text: str, n: float, at: str, n_steps: float, cfg: float, sched: str,
                      marked: str | None = None, request: gr.Request = None,
                      progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        if not name:
            raise gr.Error("No diffusion model is configured.")
        params = params_from(ctx, name, 0, 1.0, n_steps, cfg, sched)
        result = svc.trajectory(ctx, owner(request), name, cls, seed_text, params, int(n), at or None,
                                control=step_control(ctx, request, progress, "Denoising"),
                                ai_label=LABEL_CHOICES.get(marked or MY_SETTING))
        item = result.images[0]
        return served_view(ctx, result), served(item.gif_path), result.notice, str(item.seed)

    @ui_errors
    def pick_diffusion_model(name: str) -> tuple[Any, ...]:
        schedulers = scheduler_choices(ctx, name)
        return (gr.update(choices=class_choices(ctx, name), value=RANDOM),
                gr.update(choices=schedulers, value=schedulers[0] if schedulers else None),
                gr.update(value=param_default(ctx, name, "steps", 25)),
                gr.update(value=param_default(ctx, name, "guidance", 2.0)))

    def stop_generation(request: gr.Request) -> None:
        ctx.cancels.cancel(cancel_key(request))

    @ui_errors
    def do_interpolate(name: str, a_cls: str, a_seed: str, b_cls: str, b_seed: str, n: float, trunc: float,
                       temp: float, n_steps: float | None = None, cfg: float | None = None, sched: str | None = None,
                       marked: str | None = None, request: gr.Request = None) -> tuple[Any, ...]:
        result = svc.interpolate(ctx, owner(request), name, a_cls, a_seed, b_cls, b_seed, int(n),
                                 params_from(ctx, name, trunc, temp, n_steps, cfg, sched),
                                 ai_label=LABEL_CHOICES.get(marked or MY_SETTING))
        item = result.images[0]
        start, end = item.params["start"], item.params["end"]
        return (served(item.path), served(item.gif_path), result.notice, str(start["seed"]), str(end["seed"]))

    @ui_errors
    def do_reconstruct(editor: Any, name: str, cls: str, marked: str | None,
                       request: gr.Request) -> tuple[Any, ...]:
        image = editor.get("composite") if isinstance(editor, dict) else editor
        if image is None or (hasattr(image, "size") and image.size == 0):
            raise gr.Error("Upload or draw a digit first.")
        result = svc.reconstruct(ctx, owner(request), name, image, None if cls == "guess" else cls,
                                 ai_label=LABEL_CHOICES.get(marked or MY_SETTING))
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
        note = (f"The new PNG is {svc.compare(path, result.images[0]).sentence().replace('original', 'uploaded one')}; "
                "it is saved in the Gallery as a new image.")
        return served(result.images[0].path), " ".join(x for x in (result.notice, note) if x)

    # ------------------------------------------------------------ wiring
    def show_class_row(evt: gr.SelectData) -> Any:
        return gr.update(visible=evt.value != "Prompt")

    tabs.select(show_class_row, None, class_row, **FAST, api_visibility="private")
    generate_kwargs = {"concurrency_id": "generate", "concurrency_limit": ctx.settings.generation_slots()}
    model.change(pick_model, model, [truncation, temperature, steps, guidance, scheduler, label, start_label, end_label],
                 **FAST, api_visibility="private")
    dice.click(lambda: str(svc.random_seed()), None, seed, **FAST, api_visibility="private")
    reuse.click(lambda s: "" if s is None else str(s), last_seed, seed, **FAST, api_visibility="private")
    generate.click(do_generate, [model, label, seed, count, truncation, temperature, steps, guidance, scheduler, mark],
                   [images, grid, notice, last_seed], **generate_kwargs, api_name="generate_images")
    traj_model.change(pick_diffusion_model, traj_model, [traj_label, traj_scheduler, traj_steps, traj_guidance], **FAST,
                      api_visibility="private")
    stop.click(stop_generation, None, None, **FAST, api_name="stop_images")
    interp.click(do_interpolate, [model, start_label, start_seed, end_label, end_seed, frames, truncation, temperature,
                                  steps, guidance, scheduler, mark],
                 [strip, gif, interp_notice, start_seed, end_seed], **generate_kwargs, api_name="interpolate_images")
    traj_button.click(do_trajectory, [traj_model, traj_label, traj_seed, traj_frames, traj_at, traj_steps, traj_guidance,
                                      traj_scheduler, mark],
                      [traj_strip, traj_gif, traj_notice, traj_seed], **generate_kwargs, api_name="trajectory_images")
    recon.click(do_reconstruct, [drawing, vae_model, recon_label, mark], [recon_strip, recon_notice], **generate_kwargs,
                api_name="reconstruct_image")
    upload.change(do_read_info, upload, [info_text, info_json], **FAST, api_name="png_info")
    again.click(do_again, upload, [again_image, again_notice], **generate_kwargs, api_name="png_regenerate")
