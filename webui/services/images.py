"""Image generation, interpolation, reconstruction and the gallery — shared by the Image and
Gallery tabs and the HTTP API.

Every output is saved before it is shown: a PNG under DATA_DIR/images named by its id (an
interpolation also gets a GIF), and an `images` row with the parameters, seed, weights hash,
content hash and owner. A PNG carries its parameters, so it can be made again from the file
alone, and a signed C2PA manifest (see provenance). On CPU the same generator, parameters and
seed give *the same image*: identical pixels and parameters (the same content hash: the PNG
without its signature) and identical signed claims; only the signature and its time differ.
"""

from __future__ import annotations

import logging
import queue
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from generators.base import (
    CAP_CLASS_CONDITIONAL,
    CAP_IMAGE_TO_IMAGE,
    CAP_INPAINT,
    CAP_STEPS,
    CAP_TEXT_TO_IMAGE,
    CAP_TRAJECTORY,
    GenerationCancelledError,
    GenerationFailedError,
    ImageEnd,
    ImageGenerator,
    ImageOutput,
    InvalidOptionsError,
    PaintRequest,
    StepControl,
    StepEvent,
    StudioError,
    validate_model,
)
from generators.image.preprocess import open_image, prepare_image
from storage import repository as repo
from storage.files import private_dir, write_private
from storage.models import ImageRecord, new_id

from . import png, provenance
from .ai_label import stamp as stamp_label
from .context import AppContext, clean_title
from .generation import is_out_of_memory, out_of_memory_message
from .provenance import Ingredient, Sameness

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
IMAGES_DIR = "images"
GIF_MS = 120


@dataclass(frozen=True)
class SavedImage:
    id: str
    kind: str
    model: str
    label: int | None
    class_name: str
    seed: int | None
    params: dict[str, Any]
    path: Path  # the PNG
    content_hash: str
    width: int
    height: int
    created_at: str
    gif_path: Path | None = None

    @property
    def caption(self) -> str:
        if self.kind == "interpolation":
            start, end = self.params["start"], self.params["end"]
            return f"{start['class_name']}→{end['class_name']} · seeds {start['seed']}→{end['seed']}"
        if self.kind == "reconstruction":
            return f"{self.class_name} re-rendered as every class"
        if self.kind == "trajectory":
            steps = ", ".join(map(str, self.params.get("at_steps", [])))
            return f"{self.class_name} · seed {self.seed} · denoising steps {steps}"
        if self.kind == "paint":
            prompt = str(self.params.get("params", {}).get("prompt", ""))
            return f"{prompt[:40] + '…' if len(prompt) > 40 else prompt or '(no prompt)'} · seed {self.seed}"
        return f"{self.class_name} · seed {self.seed}"

    def public(self) -> dict[str, Any]:
        """What the API and the UI show of a record (no file system paths)."""
        return {"id": self.id, "kind": self.kind, "model": self.model, "label": self.label,
                "class_name": self.class_name, "seed": self.seed, "params": self.params,
                "content_hash": self.content_hash, "width": self.width, "height": self.height,
                "created_at": self.created_at, "has_gif": self.gif_path is not None}


@dataclass
class ImageResult:
    images: list[SavedImage]
    grid: Any  # PIL image of the whole batch (for display)
    notice: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GalleryPage:
    images: list[SavedImage]
    total: int
    page: int
    pages: int


# ------------------------------------------------------------------ helpers


def image_models(ctx: AppContext, owner: str | None = None) -> list[str]:
    """The shared image models plus `owner`'s own."""
    return ctx.registry.names("image", owner=owner)


def class_models(ctx: AppContext, owner: str | None = None) -> list[str]:
    """The image models that draw (class, seed) images (the shared ones and `owner`'s own)."""
    return [m for m in image_models(ctx, owner) if CAP_CLASS_CONDITIONAL in ctx.registry.get(m).info.capabilities]


def _image_generator(ctx: AppContext, model: str, owner: str | None = None) -> ImageGenerator:
    """The image model as `owner` may use it (their own trained models too; someone else's is unknown).
    Without `owner` (a page helper describing the selected model) any registered model."""
    # UnknownGeneratorError names the available models
    gen = ctx.registry.get(model) if owner is None else ctx.registry.get_visible(model, owner)
    if not isinstance(gen, ImageGenerator):
        raise InvalidOptionsError(f"{model!r} is not an image generator; pick one of: "
                                  f"{', '.join(image_models(ctx, owner)) or 'none'}.")
    return gen


def class_choices(ctx: AppContext, model: str, owner: str | None = None) -> list[str]:
    return _image_generator(ctx, model, owner).class_names


def parse_seed(value: Any) -> int | None:
    """'' / None -> None (random); a whole number 0..2^32-1 -> int; anything else -> a clear error."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InvalidOptionsError("The seed must be a whole number.")
    try:
        seed = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise InvalidOptionsError(
            f"The seed must be a whole number from 0 to {MAX_SEED}, or empty for random; got {_show(value)}.") from None
    if not 0 <= seed <= MAX_SEED:
        raise InvalidOptionsError(f"The seed must be from 0 to {MAX_SEED}; got {seed}.")
    return seed


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def parse_label(gen: ImageGenerator, value: Any) -> int | None:
    """A class index or a class name; None / '' / 'random' -> None (a random class per image)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "random")):
        return None
    names = gen.class_names
    if isinstance(value, str) and value in names:
        return names.index(value)
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        label = int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidOptionsError(f"Unknown class {_show(value)}; {gen.name} has: {', '.join(names)} (or random).") from None
    if not 0 <= label < len(names):
        raise InvalidOptionsError(f"Class {label} does not exist; {gen.name} has classes 0–{len(names) - 1}.")
    return label


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def _count(value: Any, what: str, low: int, high: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = int(value)
        if number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise InvalidOptionsError(f"The {what} must be a whole number from {low} to {high}; got {_show(value)}.") from None
    if not low <= number <= high:
        raise InvalidOptionsError(f"The {what} must be from {low} to {high}; got {number}.")
    return number


def _params(gen: ImageGenerator, values: dict[str, Any] | None) -> BaseModel:
    return validate_model(gen.info.params, {k: v for k, v in (values or {}).items() if v is not None}, "setting")


def _images_dir(ctx: AppContext) -> Path:
    return private_dir(ctx.store.data_dir / IMAGES_DIR)


def _write_atomic(path: Path, data: bytes) -> None:
    write_private(path, data)


def _saved(ctx: AppContext, row: ImageRecord) -> SavedImage:
    path = ctx.store.data_dir / row.file
    gif = path.with_suffix(".gif")
    return SavedImage(row.id, row.kind, row.model, row.label, row.class_name, row.seed, dict(row.params), path,
                      row.content_hash, row.width, row.height, row.created_at.isoformat(timespec="seconds"),
                      gif if row.kind in ("interpolation", "trajectory") and gif.is_file() else None)


def _meta(gen: ImageGenerator, kind: str, weights_hash: str, params: BaseModel, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "generator": gen.name, "plugin": gen.info.plugin, "weights_hash": weights_hash,
            "params": params.model_dump(mode="json"), **fields}


class Output(NamedTuple):
    """One image to save: its studio parameters, the picture, an optional animation, and the images it
    was made from (an init image, an upload: they become the C2PA manifest's ingredients)."""

    meta: dict[str, Any]
    image: Any
    gif: bytes | None = None
    ingredients: tuple[Ingredient, ...] = ()


def _title(meta: dict[str, Any]) -> str:
    """The manifest's title: from the parameters, so a re-run's claims equal the original's."""
    return f"{meta.get('kind', 'image')} by {meta.get('generator')}"


def _encode(ctx: AppContext, meta: dict[str, Any], image: Any, ingredients: tuple[Ingredient, ...]) -> tuple[bytes, str]:
    """The one place a studio PNG is made: deterministic encoding, then the signed C2PA manifest.

    Returns the file and its content hash — the hash of the unsigned encoding, which is what makes
    two files "the same image" (see provenance)."""
    data = png.encode_png(image, meta)
    signed = ctx.signer.sign(data, "image/png", {"format": png.META_FORMAT, **meta}, _title(meta), ingredients)
    return signed, png.sha256(data)


AI_LABEL = "ai_label"  # the owner setting: mark new images with a visible "AI-generated" label


def label_default(ctx: AppContext, owner: str) -> bool:
    """Whether `owner`'s new images get the visible label when a request does not say (off unless set)."""
    with ctx.store.begin() as s:
        return bool(repo.get_owner_setting(s, owner, AI_LABEL, False))


def set_label_default(ctx: AppContext, owner: str, on: Any) -> bool:
    if not isinstance(on, bool):
        raise InvalidOptionsError(f"ai_label must be true or false; got {_show(on)}.")
    with ctx.store.begin() as s:
        repo.set_owner_setting(s, owner, AI_LABEL, on)
    return on


def wants_label(ctx: AppContext, owner: str, ai_label: Any) -> bool:
    """A request's choice (True / False), or the owner's setting when it makes none (None)."""
    if ai_label is None:
        return label_default(ctx, owner)
    if not isinstance(ai_label, bool):
        raise InvalidOptionsError(f"ai_label must be true, false or empty (your setting); got {_show(ai_label)}.")
    return ai_label


def _shown(pixels: Any, mark: bool) -> Any:
    """Display pixels (N, H, W, C) as the saved files show them: labelled when `mark`."""
    if not mark:
        return pixels
    import numpy as np

    stamped = [np.asarray(stamp_label(png.to_pil(p))) for p in pixels]
    return np.stack([a[..., None] if a.ndim == 2 else a for a in stamped])


def _store(ctx: AppContext, owner: str, gen: ImageGenerator, outputs: list[Output | tuple[Any, ...]],
           generation_id: str, mark: bool | None = None) -> list[SavedImage]:
    """Write files (signed PNG [+ signed GIF]) then rows, in one transaction; files are removed if the rows fail.

    `mark` (None: the owner's setting) stamps the visible AI label on each image and records it
    in its parameters (`visible_label`), so a re-run makes it again."""
    mark = wants_label(ctx, owner, mark)
    folder, written, rows = _images_dir(ctx), [], []
    batch_id = new_id() if len(outputs) > 1 else None
    try:
        planned = []
        for meta, image, gif, ingredients in (Output(*o) for o in outputs):
            image_id = new_id()
            if mark:
                image, meta = stamp_label(image), {**meta, "visible_label": True}
            data, content_hash = _encode(ctx, meta, image, tuple(ingredients))
            path = folder / f"{image_id}.png"
            _write_atomic(path, data)
            written.append(path)
            if gif is not None:
                gif = ctx.signer.sign(gif, "image/gif", {"format": png.META_FORMAT, **meta}, _title(meta) + " (animation)")
                _write_atomic(path.with_suffix(".gif"), gif)
                written.append(path.with_suffix(".gif"))
            planned.append((image_id, meta, image, content_hash))
        with ctx.store.begin() as s:
            for image_id, meta, image, content_hash in planned:
                stored_params = {k: v for k, v in meta.items() if k not in ("generator", "plugin", "weights_hash")}
                rows.append(repo.add_image(
                    s, owner, id=image_id, kind=meta["kind"], model=gen.name, plugin=gen.info.plugin,
                    weights_hash=meta["weights_hash"], label=meta.get("class"), class_name=meta.get("class_name", ""),
                    seed=meta.get("seed"), params=stored_params, batch_id=batch_id,
                    file=f"{IMAGES_DIR}/{image_id}.png", content_hash=content_hash,
                    width=image.width, height=image.height, generation_id=generation_id))
            return [_saved(ctx, row) for row in rows]
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _run(ctx: AppContext, owner: str, model: str, params_json: dict[str, Any], seed: int | None, source: str,
         work: Any) -> Any:
    """Hold the model for `work(gen)`, recording a `generations` row with its outcome and time."""
    ctx.check_rate(owner)
    with ctx.store.begin() as s:
        gen_row = repo.start_generation(s, owner, model, params_json, source=source, seed=seed,
                                        instance_id=ctx.store.instance_id)
    started = time.perf_counter()
    try:
        with ctx.registry.use(model, owner=owner) as gen:
            result = work(gen, gen_row.id)
    except GenerationCancelledError:
        with ctx.store.begin() as s:  # stopped between two steps: nothing was written
            repo.finish_generation(s, gen_row.id, "cancelled")
        raise
    except BaseException as exc:
        error = exc if isinstance(exc, StudioError) else GenerationFailedError(f"Image generation failed: {exc}")
        if is_out_of_memory(exc):
            error = GenerationFailedError(out_of_memory_message(ctx, model, exc))
        if not isinstance(exc, StudioError):
            log.exception("Image generation with %s failed", model)
        with ctx.store.begin() as s:
            repo.finish_generation(s, gen_row.id, "error", error=str(error))
        if isinstance(exc, (StudioError, KeyboardInterrupt, GeneratorExit)):
            raise
        raise error from exc
    with ctx.store.begin() as s:
        repo.finish_generation(s, gen_row.id, "ok")
    log.info("%s made %s for %s in %.0f ms", model, params_json.get("kind"), owner, 1000 * (time.perf_counter() - started))
    return result


# ------------------------------------------------------------------ generate


def generate(ctx: AppContext, owner: str, model: str, label: Any = None, seed: Any = None, count: Any = 1,
             params: dict[str, Any] | None = None, source: str = "ui", control: StepControl | None = None,
             ai_label: Any = None) -> ImageResult:
    """`count` images of class `label` (None: a random class each) from seeds seed, seed+1, …

    `ai_label` True / False: a visible "AI-generated" mark on each image or not; None: the owner's setting.

    `control` (progress, preview, cancel) reaches plugins that declare `steps`; a cancel between two
    steps records the generation as `cancelled` and saves nothing."""
    gen = _image_generator(ctx, model, owner)
    if CAP_CLASS_CONDITIONAL not in gen.info.capabilities:
        raise InvalidOptionsError(f"{model} makes images from a prompt, not from a class; write a prompt instead.")
    count = _count(count, "batch size", 1, ctx.config.max_image_batch)
    label_index = parse_label(gen, label)
    mark = wants_label(ctx, owner, ai_label)
    base_seed = parse_seed(seed)
    base_seed = random_seed() if base_seed is None else base_seed
    checked = _params(gen, params)
    seeds = [(base_seed + i) % (MAX_SEED + 1) for i in range(count)]
    names = gen.class_names
    labels = [label_index if label_index is not None else random.Random(s).randrange(len(names)) for s in seeds]
    ends = [ImageEnd(lab, s) for lab, s in zip(labels, seeds, strict=True)]

    def work(g: ImageGenerator, generation_id: str) -> tuple[list[SavedImage], Any]:
        stepping = control is not None and CAP_STEPS in g.info.capabilities
        out: ImageOutput = g.sample(ends, checked, control=control) if stepping else g.sample(ends, checked)
        outputs = [(_meta(g, "sample", out.weights_hash, checked, **{"class": e.label, "class_name": names[e.label],
                                                                      "seed": e.seed}),
                    png.to_pil(pixels), None) for e, pixels in zip(ends, out.pixels, strict=True)]
        return _store(ctx, owner, g, outputs, generation_id, mark), out.pixels

    saved, pixels = _run(ctx, owner, model, {"kind": "sample", "count": count, "label": label_index,
                                             **checked.model_dump(mode="json")}, base_seed, source, work)
    notice = f"{count} image(s), seeds {seeds[0]}–{seeds[-1]}" if count > 1 else f"seed {seeds[0]}"
    return ImageResult(saved, _grid_of(_shown(pixels, mark)), notice=notice)


def _grid_of(pixels: Any) -> Any:
    """One display grid of a batch (N, H, W, C) uint8 — the same pixels the saved PNGs hold."""
    n = len(pixels)
    cols = min(10, n) if n <= 10 else 8 if n % 10 else 10
    return png.tile(pixels, cols, max(1, 96 // pixels.shape[1]))


def _enlarged(image: Any, scale: int) -> Any:
    from PIL import Image

    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


# ------------------------------------------------------------------ interpolate


def interpolate(ctx: AppContext, owner: str, model: str, start_label: Any, start_seed: Any, end_label: Any,
                end_seed: Any, frames: Any = 10, params: dict[str, Any] | None = None, source: str = "ui",
                ai_label: Any = None) -> ImageResult:
    """A latent walk from (class, seed) to (class, seed): one strip PNG and an animated GIF, saved together."""
    gen = _image_generator(ctx, model, owner)
    mark = wants_label(ctx, owner, ai_label)
    frames = _count(frames, "number of frames", 2, ctx.config.max_interpolation_frames)
    names = gen.class_names
    seeds = [parse_seed(start_seed), parse_seed(end_seed)]
    seeds = [random_seed() if s is None else s for s in seeds]
    labels = [parse_label(gen, start_label), parse_label(gen, end_label)]
    labels = [random.Random(s).randrange(len(names)) if lab is None else lab for lab, s in zip(labels, seeds, strict=True)]
    checked = _params(gen, params)
    start, end = ImageEnd(labels[0], seeds[0]), ImageEnd(labels[1], seeds[1])

    def work(g: ImageGenerator, generation_id: str) -> tuple[list[SavedImage], Any]:
        out = g.interpolate(start, end, frames, checked)
        tiles = [png.to_pil(p) for p in _shown(out.pixels, mark)]
        strip = png.tile(out.pixels, cols=frames)
        ends = {"start": {"class": start.label, "class_name": names[start.label], "seed": start.seed},
                "end": {"class": end.label, "class_name": names[end.label], "seed": end.seed}}
        same = start.label == end.label
        meta = _meta(g, "interpolation", out.weights_hash, checked, frames=frames, **ends,
                     **{"class": start.label if same else None, "class_name": names[start.label] if same
                        else f"{names[start.label]}→{names[end.label]}", "seed": start.seed})
        saved = _store(ctx, owner, g, [(meta, strip, png.encode_gif(tiles, GIF_MS))], generation_id, mark)
        return saved, stamp_label(strip) if mark else strip

    saved, strip = _run(ctx, owner, model, {"kind": "interpolation", "frames": frames, "start": [start.label, start.seed],
                                            "end": [end.label, end.seed], **checked.model_dump(mode="json")},
                        start.seed, source, work)
    return ImageResult(saved, _enlarged(strip, 2), notice=f"{frames} frames from {names[start.label]} (seed {start.seed}) "
                                            f"to {names[end.label]} (seed {end.seed})")


# ------------------------------------------------------------------ denoising trajectory


def trajectory_steps(total: int, frames: int) -> list[int]:
    """`frames` steps spread evenly from 0 (the starting noise) to `total` (the image), both included."""
    frames = max(2, min(frames, total + 1))
    return sorted({round(i * total / (frames - 1)) for i in range(frames)})


def parse_steps(value: Any, total: int) -> list[int]:
    """'0, 5, 10' or [0, 5, 10] -> sorted distinct steps within 0..total, or a clear error."""
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value or [])
    steps = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        steps.append(_count(item.strip() if isinstance(item, str) else item, "trajectory step", 0, total))
    if not steps:
        raise InvalidOptionsError(f"Name at least one step from 0 to {total} to show (0 = the starting noise).")
    return sorted(set(steps))


def trajectory(ctx: AppContext, owner: str, model: str, label: Any = None, seed: Any = None,
               params: dict[str, Any] | None = None, frames: Any = 8, at_steps: Any = None, source: str = "ui",
               control: StepControl | None = None, ai_label: Any = None) -> ImageResult:
    """One image's denoising path, saved as a strip PNG (top row x_t, bottom row the model's estimate of the
    clean image at each shown step) and an animated GIF of the same frames.

    `at_steps` (a list or '0, 5, 25') picks the steps; otherwise `frames` steps evenly from noise to image."""
    gen = _image_generator(ctx, model, owner)
    if CAP_TRAJECTORY not in gen.info.capabilities:
        raise InvalidOptionsError(f"{model} has no denoising trajectory; pick a diffusion model.")
    checked = _params(gen, params)
    total = int(checked.steps)
    if at_steps is None or (isinstance(at_steps, str) and not at_steps.strip()):
        steps = trajectory_steps(total, _count(frames, "number of frames", 2, ctx.config.max_interpolation_frames))
    else:
        steps = parse_steps(at_steps, total)
        if len(steps) > ctx.config.max_interpolation_frames:
            raise InvalidOptionsError(f"Show at most {ctx.config.max_interpolation_frames} steps; got {len(steps)}.")
    names = gen.class_names
    base_seed = parse_seed(seed)
    base_seed = random_seed() if base_seed is None else base_seed
    label_index = parse_label(gen, label)
    label_index = random.Random(base_seed).randrange(len(names)) if label_index is None else label_index
    end = ImageEnd(label_index, base_seed)

    def work(g: ImageGenerator, generation_id: str) -> tuple[list[SavedImage], Any]:
        out = g.trajectory(end, checked, steps, control)
        n = len(steps)
        strip = png.tile(out.pixels, cols=n)
        meta = _meta(g, "trajectory", out.weights_hash, checked, at_steps=steps,
                     **{"class": end.label, "class_name": names[end.label], "seed": end.seed})
        gif = _trajectory_gif(out.pixels, steps, total)
        return _store(ctx, owner, g, [(meta, strip, gif)], generation_id, ai_label), out.pixels

    saved, pixels = _run(ctx, owner, model, {"kind": "trajectory", "label": end.label, "at_steps": steps,
                                             **checked.model_dump(mode="json")}, end.seed, source, work)
    view = _labelled_strip(pixels, steps, total)
    return ImageResult(saved, stamp_label(view) if saved[0].params.get("visible_label") else view,
                       notice=f"Class {names[end.label]} from seed {end.seed}: x_t after steps "
                              f"{', '.join(map(str, steps))} of {total} (top) and the model's guess of the finished "
                              f"image at each (bottom).")


def _labelled_strip(pixels: Any, steps: list[int], total: int, scale: int = 3) -> Any:
    """The trajectory strip enlarged for the page, with each column's step written under it."""
    from PIL import Image, ImageDraw

    strip = _enlarged(png.tile(pixels, cols=len(steps)), scale).convert("RGB")
    band = 16
    canvas = Image.new("RGB", (strip.width, strip.height + band), "white")
    canvas.paste(strip, (0, 0))
    draw = ImageDraw.Draw(canvas)
    tile = (pixels.shape[2] + png.PAD) * scale
    for k, step in enumerate(steps):
        text = "noise" if step == 0 else f"step {step}" if step < total else f"{step}: image"
        draw.text((png.PAD * scale + k * tile + 2, strip.height + 2), text, fill=(60, 60, 60))
    return canvas


def _trajectory_gif(pixels: Any, steps: list[int], total: int, scale: int = 4) -> bytes:
    """x_t beside the estimate of the finished image, one frame per shown step, forward, holding the image."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    n = len(steps)
    frames = []
    for k, step in enumerate(steps):
        pair = _enlarged(png.tile(np.stack([pixels[k], pixels[n + k]]), cols=2), scale).convert("L")
        frame = Image.new("L", (pair.width, pair.height + 14), 255)
        frame.paste(pair, (0, 14))
        ImageDraw.Draw(frame).text((4, 1), f"step {step} of {total}", fill=0)
        frames.append(frame)
    durations = [GIF_MS * 3] * (n - 1) + [GIF_MS * 12]  # hold the finished image before starting again
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out.getvalue()


# ------------------------------------------------------------------ reconstruct


def reconstruct(ctx: AppContext, owner: str, model: str, image: Any, label: Any = None, source: str = "ui",
                ai_label: Any = None) -> ImageResult:
    """Encode an uploaded or drawn image and decode it as its own class and as every other class.

    The strip shows: the prepared input, its reconstruction, then the same latent decoded as
    each class in order. `label` None lets the model's classifier guess the class.
    """
    gen = _image_generator(ctx, model, owner)
    if not hasattr(gen, "guess_label") or "reconstruct" not in gen.info.capabilities:
        raise InvalidOptionsError(f"{model} cannot reconstruct images; pick a VAE.")
    if image is None:
        raise InvalidOptionsError("Upload or draw an image first.")
    h, w, c = gen.image_size
    pixels = prepare_image(image, h, c)
    names = gen.class_names
    asked = parse_label(gen, label)
    mark = wants_label(ctx, owner, ai_label)

    def work(g: Any, generation_id: str) -> tuple[list[SavedImage], Any, int, bool]:
        guessed = asked is None
        lab = g.guess_label(pixels) if guessed else asked
        if lab is None:
            raise InvalidOptionsError("Pick the class of the uploaded image (this model has no classifier to guess it).")
        out = g.reconstruct(pixels, lab, [lab, *range(len(names))])
        import numpy as np

        strip = png.tile(np.concatenate([pixels[None], out.pixels]), cols=len(names) + 2)
        meta = _meta(g, "reconstruction", out.weights_hash, g.info.params(), **{"class": lab, "class_name": names[lab],
                                                                        "seed": None, "guessed_class": guessed,
                                                                        "input_hash": png.sha256(pixels.tobytes())})
        upload = Ingredient.of_upload("uploaded image", image, pixels)  # the strip holds it and what was made of it
        saved = _store(ctx, owner, g, [Output(meta, strip, None, (upload,))], generation_id, mark)
        return saved, stamp_label(strip) if mark else strip, lab, guessed

    saved, strip, lab, guessed = _run(ctx, owner, model, {"kind": "reconstruction", "label": asked}, None, source, work)
    strip = _enlarged(strip, 3)
    how = "guessed by the classifier" if guessed else "as given"
    return ImageResult(saved, strip, notice=f"Read as {names[lab]} ({how}). Strip: your image, its reconstruction, "
                                            f"then the same handwriting as {', '.join(names)}.",
                       extra={"label": lab, "guessed": guessed})


# ------------------------------------------------------------------ paint (prompted images)


PAINT_MODES = (CAP_TEXT_TO_IMAGE, CAP_IMAGE_TO_IMAGE, CAP_INPAINT)


def paint_models(ctx: AppContext, owner: str | None = None) -> list[str]:
    """The image models that make pictures from a prompt (the shared ones and `owner`'s own)."""
    return [m for m in image_models(ctx, owner) if set(PAINT_MODES) & ctx.registry.get(m).info.capabilities]


def _rgb(image: Any, what: str) -> Any:
    import numpy as np

    try:
        opened = open_image(image)
    except InvalidOptionsError as exc:
        raise InvalidOptionsError(f"{what}: {exc}") from None
    if opened.mode in ("RGBA", "LA", "PA") or (opened.mode == "P" and "transparency" in opened.info):
        from PIL import Image

        rgba = opened.convert("RGBA")
        opened = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(opened.convert("RGB"))


def mask_array(mask: Any) -> Any:
    """A mask image → (H, W) uint8, 255 = repaint: its alpha where it has one that varies (strokes painted
    on a transparent layer), else its brightness (white = repaint)."""
    import numpy as np

    try:
        image = open_image(mask)
    except InvalidOptionsError as exc:
        raise InvalidOptionsError(f"mask: {exc}") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if alpha.min() != alpha.max():
            return np.where(alpha > 0, 255, 0).astype(np.uint8)
    return np.where(np.asarray(image.convert("L")) > 127, 255, 0).astype(np.uint8)


def _resized(array: Any, width: int, height: int, nearest: bool = False) -> Any:
    import numpy as np
    from PIL import Image

    if array.shape[1] == width and array.shape[0] == height:
        return array
    image = Image.fromarray(array)
    return np.asarray(image.resize((width, height), Image.NEAREST if nearest else Image.LANCZOS))


def _with_prompt_loras(params: dict[str, Any] | None) -> dict[str, Any]:
    """A1111's `<lora:NAME:WEIGHT>` tags in the prompt become LoRAs (so prompts from A1111, Civitai and
    SillyTavern work as written); a LoRA given both ways takes the tag's weight."""
    from .infotext import LORA_RE

    values = dict(params or {})
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not LORA_RE.search(prompt):
        return values
    tags = {name: float(weight) if weight else 1.0 for name, weight in LORA_RE.findall(prompt)}
    given = [lo for lo in values.get("loras") or [] if not (isinstance(lo, dict) and lo.get("name") in tags)]
    values["loras"] = [*given, *({"name": n, "weight": w} for n, w in tags.items())]
    values["prompt"] = " ".join(LORA_RE.sub("", prompt).split())
    return values


def paint_request(ctx: AppContext, gen: ImageGenerator, params: dict[str, Any] | None, seed: Any = None,
                  count: Any = 1, init_image: Any = None, mask: Any = None) -> PaintRequest:
    """Validate everything a person typed or uploaded into a PaintRequest; every error names its field.

    The init image is resized to the requested size (A1111's "just resize"); a mask must have the
    init image's size and is resized with it."""
    checked = _params(gen, _with_prompt_loras(params))
    limit = ctx.config.max_image_side
    for side in ("width", "height"):
        if getattr(checked, side) > limit:
            raise InvalidOptionsError(f"{side}: at most {limit} px on this server (setting max_image_side); "
                                      f"got {getattr(checked, side)}.")
    count = _count(count, "batch size", 1, ctx.config.max_image_batch)
    base_seed = parse_seed(seed)
    base_seed = random_seed() if base_seed is None else base_seed
    init = mask_pixels = None
    if init_image is not None:
        init = _rgb(init_image, "init_image")
    if mask is not None:
        if init is None:
            raise InvalidOptionsError("mask: inpainting needs an init image to repaint.")
        mask_pixels = mask_array(mask)
        if mask_pixels.shape != init.shape[:2]:
            raise InvalidOptionsError(f"mask: it is {mask_pixels.shape[1]}×{mask_pixels.shape[0]} but the init image is "
                                      f"{init.shape[1]}×{init.shape[0]}; paint the mask on the same image.")
        if not mask_pixels.any():
            raise InvalidOptionsError("mask: nothing is painted; paint over the part to repaint (or drop the mask "
                                      "for image-to-image).")
        mask_pixels = _resized(mask_pixels, checked.width, checked.height, nearest=True)
    if init is not None:
        init = _resized(init, checked.width, checked.height)
    request = PaintRequest(checked, base_seed, count, init, mask_pixels)
    gen.check_paint(request)
    return request


def paint(ctx: AppContext, owner: str, model: str, params: dict[str, Any] | None = None, seed: Any = None,
          count: Any = 1, init_image: Any = None, mask: Any = None, source: str = "ui",
          control: StepControl | None = None, ai_label: Any = None) -> ImageResult:
    """`count` images from a prompt (and an init image / mask) from seeds seed, seed+1, …

    Each PNG carries the studio's JSON and A1111's `parameters`; `control` gets every step (progress,
    preview) and may stop between two steps — the generation is then `cancelled` and nothing is saved.
    `result.extra["request"]` keeps the PaintRequest (its init image is what the picture was made from)."""
    gen = _image_generator(ctx, model, owner)
    if not set(PAINT_MODES) & gen.info.capabilities:
        raise InvalidOptionsError(f"{model} does not make images from a prompt; pick one of: "
                                  f"{', '.join(paint_models(ctx, owner)) or 'none configured'}.")
    request = paint_request(ctx, gen, params, seed, count, init_image, mask)
    mark = wants_label(ctx, owner, ai_label)
    # the C2PA ingredient of an img2img / inpainting output: the init image it was made from (as resized)
    # (the uploaded file as it came when the caller has it: a signed init image keeps its manifest)
    init = (Ingredient.of_upload("init image", init_image, request.init_image),) if request.init_image is not None else ()
    init_hash = png.sha256(request.init_image.tobytes()) if request.init_image is not None else None
    mask_hash = png.sha256(request.mask.tobytes()) if request.mask is not None else None

    def work(g: ImageGenerator, generation_id: str) -> tuple[list[SavedImage], Any]:
        out: ImageOutput = g.paint(request, control)
        outputs = []
        for s, pixels in zip(request.seeds, out.pixels, strict=True):
            meta = _meta(g, "paint", out.weights_hash, request.params, mode=request.mode, seed=s,
                         details=out.details, **{"class": None, "class_name": ""})
            if init_hash:
                meta["init_hash"] = init_hash
            if mask_hash:
                meta["mask_hash"] = mask_hash
            outputs.append(Output(meta, png.to_pil(pixels), None, init))
        return _store(ctx, owner, g, outputs, generation_id, mark), out.pixels

    saved, pixels = _run(ctx, owner, model, {"kind": "paint", "mode": request.mode, "count": request.count,
                                             **request.params.model_dump(mode="json")}, request.seed, source, work)
    seeds = request.seeds
    notice = f"{request.count} image(s), seeds {seeds[0]}–{seeds[-1]}" if request.count > 1 else f"seed {seeds[0]}"
    cols = min(4, len(pixels))
    return ImageResult(saved, png.tile(_shown(pixels, mark), cols), notice=notice, extra={"request": request})


def paint_with_progress(ctx: AppContext, owner: str, model: str, params: dict[str, Any] | None = None,
                        seed: Any = None, count: Any = 1, init_image: Any = None, mask: Any = None,
                        cancel: threading.Event | None = None, preview_every: int = 5,
                        source: str = "ui", ai_label: Any = None) -> Iterator[StepEvent | ImageResult]:
    """`paint`, watched: yields a StepEvent after each step (with a preview every `preview_every`), then
    the ImageResult. Setting `cancel` (or closing the iterator) stops between two steps."""
    cancel = cancel or threading.Event()
    events: queue.Queue[Any] = queue.Queue()
    control = StepControl(events.put, cancel, preview_every)

    def work() -> None:
        try:
            events.put(paint(ctx, owner, model, params, seed, count, init_image, mask, source, control, ai_label))
        except BaseException as exc:  # handed to the caller's thread, raised there
            events.put(exc)

    worker = threading.Thread(target=work, name="paint-progress", daemon=True)
    worker.start()
    try:
        while True:
            item = events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, ImageResult):
                return
    finally:
        if worker.is_alive():
            cancel.set()  # a closed watcher (Stop, a closed page) stops the work between two steps


# ------------------------------------------------------------------ PNG info and re-runs


def png_info(source: Any) -> dict[str, Any]:
    return png.read_meta(source)


def regenerate(ctx: AppContext, owner: str, meta: dict[str, Any], model: str | None = None, source: str = "ui") -> ImageResult:
    """Make an image again from its PNG parameters (or a gallery row's)."""
    kind = meta.get("kind", "sample")
    model = model or meta.get("generator")
    if not model or model not in image_models(ctx, owner):
        raise InvalidOptionsError(f"The generator {model!r} that made this image is not configured here "
                                  f"(configured: {', '.join(image_models(ctx, owner)) or 'none'}).")
    params = meta.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidOptionsError("The image's settings are damaged.")
    again_label = bool(meta.get("visible_label"))  # a labelled image is made again labelled, an unlabelled one not
    if kind == "paint":
        if meta.get("mode", "text-to-image") != "text-to-image":
            raise InvalidOptionsError(f"This image was made by {meta.get('mode')} from an init image the PNG does not "
                                      f"carry; load that image in the Image tab with these settings instead.")
        result = paint(ctx, owner, model, params, meta.get("seed"), 1, source=source, ai_label=again_label)
    elif kind == "sample":
        result = generate(ctx, owner, model, meta.get("class"), meta.get("seed"), 1, params, source, ai_label=again_label)
    elif kind == "interpolation":
        start, end = meta.get("start") or {}, meta.get("end") or {}
        result = interpolate(ctx, owner, model, start.get("class"), start.get("seed"), end.get("class"),
                             end.get("seed"), meta.get("frames", 10), params, source, ai_label=again_label)
    elif kind == "trajectory":
        result = trajectory(ctx, owner, model, meta.get("class"), meta.get("seed"), params,
                            at_steps=meta.get("at_steps") or None, source=source, ai_label=again_label)
    elif kind == "grid":
        raise InvalidOptionsError("This is the page's grid of a whole batch; make one of its images again from the "
                                  "Gallery (or its own PNG).")
    else:
        raise InvalidOptionsError("A reconstruction cannot be made again from its PNG: it needs the original upload.")
    notice = ""
    if meta.get("weights_hash") and png.read_meta(result.images[0].path).get("weights_hash") != meta["weights_hash"]:
        notice = "Note: this generator's weights differ from the ones that made the image, so the result differs."
    result.notice = " ".join(x for x in (result.notice, notice) if x)
    return result


def signed_view(ctx: AppContext, result: ImageResult) -> bytes:
    """The picture the page shows for a result (a batch's grid, a labelled strip) as a signed PNG, so a
    person who saves it from the page also gets content credentials: kind `grid`, claiming the model
    and listing the saved images it shows (their ids and content hashes)."""
    first = result.images[0]
    stored = png.read_meta(first.path)
    meta = {"kind": "grid", "generator": first.model, "plugin": stored.get("plugin"),
            "weights_hash": stored.get("weights_hash"), "shows": first.kind, "params": first.params.get("params", {}),
            "images": [{"id": i.id, "content_hash": i.content_hash} for i in result.images],
            "visible_label": bool(stored.get("visible_label"))}
    return _encode(ctx, meta, result.grid, ())[0]


def compare(original: Any, made: SavedImage) -> Sameness:
    """Whether a re-run `made` is the same image as `original` (a path or the uploaded bytes)."""
    data = original if isinstance(original, bytes) else Path(original).read_bytes()
    return provenance.compare(data, made.path.read_bytes())


def verify_image(ctx: AppContext, data: bytes) -> provenance.Verification:
    """The content credentials of any image file (a file without them is reported, not refused)."""
    return ctx.signer.verify(data)


def signing_identity(ctx: AppContext) -> dict[str, str] | None:
    """Who this studio signs as (None while signing is off)."""
    if not ctx.signer.enabled:
        return None
    who = ctx.signer.identity
    return {"subject": who.subject, "issuer": who.issuer, "alg": who.alg, "source": who.source,
            "fingerprint": who.fingerprint, "not_after": who.not_after}


# ------------------------------------------------------------------ gallery


def gallery(ctx: AppContext, owner: str, model: str | None = None, label: Any = None, page: Any = 1,
            page_size: int = 24) -> GalleryPage:
    label_index = None
    if not (label is None or (isinstance(label, str) and label.strip().lower() in ("", "all"))):
        label_index = _count(label, "class filter", 0, 100_000)
    page = _count(page if page not in (None, "") else 1, "page", 1, 10**6)
    model = clean_title(model, "generator filter") if model is not None else None
    with ctx.store.begin() as s:
        rows, total = repo.list_images(s, owner, model or None, label_index, (page - 1) * page_size, page_size)
        items = [_saved(ctx, r) for r in rows]
    pages = max(1, -(-total // page_size))
    return GalleryPage(items, total, min(page, pages), pages)


def gallery_models(ctx: AppContext, owner: str) -> list[str]:
    with ctx.store.begin() as s:
        return repo.image_models(s, owner)


def get_image(ctx: AppContext, owner: str, image_id: str) -> SavedImage:
    with ctx.store.begin() as s:
        return _saved(ctx, repo.get_image(s, owner, image_id))


def rerun(ctx: AppContext, owner: str, image_id: str, source: str = "ui") -> ImageResult:
    item = get_image(ctx, owner, image_id)
    return regenerate(ctx, owner, png.read_meta(item.path), item.model, source)


def delete_image(ctx: AppContext, owner: str, image_id: str) -> None:
    """Delete the row, then its files (a crash in between leaves an orphan file, never a row without a file)."""
    with ctx.store.begin() as s:
        row = repo.delete_image(s, owner, image_id)
        path = ctx.store.data_dir / row.file
    for f in (path, path.with_suffix(".gif")):
        for forget in ctx.served_copies:  # served copies go first: a kept URL must stop working
            forget(f)
        f.unlink(missing_ok=True)
