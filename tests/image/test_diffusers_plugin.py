"""The diffusers plugin on a tiny random-weight SD pipeline built in the test and saved to a folder,
loaded exactly as a user's folder: text-to-image, img2img, inpainting, a LoRA, cancel between steps,
determinism, bad sources — and through the image service: PNGs with the studio's JSON and A1111's
`parameters`, re-made byte for byte, A1111 PNGs read, bad input named by field with nothing saved.
Nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from generators.base import (
    GenerationCancelledError,
    InvalidOptionsError,
    LoadFailedError,
    PaintRequest,
    StepControl,
    StepEvent,
)
from generators.image.diffusers_plugin import DiffusersParams, DiffusersPlugin

SIZE = 32


def params(**kw: Any) -> DiffusersParams:
    return DiffusersParams(**{"prompt": "a red cat", "width": SIZE, "height": SIZE, "steps": 3, **kw})


def test_what_is_known_before_loading(tiny_sd_folder: Path) -> None:
    gen = DiffusersPlugin("tiny-sd", {"source": str(tiny_sd_folder)})
    assert not gen.loaded
    assert gen.schedulers() == ["DPM++ 2M", "Euler", "Euler a", "DDIM"]
    assert gen.loras() == ["other-model", "style"]
    assert gen.describe()["defaults"]["scheduler"] == "DPM++ 2M" and gen.estimated_memory_bytes() > 0


def test_text_to_image_is_deterministic_and_each_image_has_its_seed(tiny_sd: DiffusersPlugin) -> None:
    events: list[StepEvent] = []
    batch = tiny_sd.paint(PaintRequest(params(), seed=5, count=2), StepControl(events.append, preview_every=2))
    assert batch.pixels.shape == (2, SIZE, SIZE, 3) and batch.pixels.dtype == np.uint8
    assert [(e.step, e.total) for e in events] == [(1, 3), (2, 3), (3, 3)]
    assert events[0].preview is None and events[1].preview.shape == (2, SIZE // 2, SIZE // 2, 3)
    again = tiny_sd.paint(PaintRequest(params(), seed=5, count=2))
    assert np.array_equal(batch.pixels, again.pixels)
    alone = tiny_sd.paint(PaintRequest(params(), seed=6))
    assert np.abs(alone.pixels[0].astype(int) - batch.pixels[1]).max() <= 1  # image i of a batch is seed + i
    assert not np.array_equal(batch.pixels[0], batch.pixels[1])
    other = tiny_sd.paint(PaintRequest(params(prompt="a blue dog", negative_prompt="blurry"), seed=5))
    assert not np.array_equal(other.pixels[0], batch.pixels[0])
    assert batch.details["scheduler_class"] == "DPMSolverMultistepScheduler" and len(batch.weights_hash) == 16


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DDIM"])
def test_every_offered_scheduler_runs_and_differs(tiny_sd: DiffusersPlugin, scheduler: str) -> None:
    base = tiny_sd.paint(PaintRequest(params(steps=2), seed=1)).pixels
    out = tiny_sd.paint(PaintRequest(params(steps=2, scheduler=scheduler), seed=1))
    assert out.details["scheduler_class"].startswith(scheduler.split()[0][:4].upper() if scheduler == "DDIM" else "Euler")
    assert out.pixels.shape == base.shape
    with pytest.raises(InvalidOptionsError, match="scheduler: 'LCM' is not one of"):
        tiny_sd.check_paint(PaintRequest(params(scheduler="LCM"), seed=1))


def test_image_to_image_and_inpaint(tiny_sd: DiffusersPlugin) -> None:
    rng = np.random.default_rng(0)
    init = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    steps: list[tuple[int, int]] = []
    weak = tiny_sd.paint(PaintRequest(params(steps=5, strength=0.4), seed=3, init_image=init),
                        StepControl(lambda e: steps.append((e.step, e.total))))
    assert weak.details["mode"] == "image-to-image"
    assert steps == [(1, 2), (2, 2)]  # strength 0.4 of 5 steps: the last 2 steps, from the noised init image
    other_init = tiny_sd.paint(PaintRequest(params(steps=5, strength=0.4), seed=3, init_image=255 - init))
    assert not np.array_equal(weak.pixels, other_init.pixels)  # the picture starts from the init image
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    out = tiny_sd.paint(PaintRequest(params(strength=1.0), seed=3, init_image=init, mask=mask))
    assert out.details["mode"] == "inpaint"
    assert np.array_equal(out.pixels[0][mask == 0], init[mask == 0])  # outside the mask: untouched
    assert not np.array_equal(out.pixels[0][mask > 0], init[mask > 0])
    with pytest.raises(InvalidOptionsError, match="strength: with 3 steps a strength of 0.2 runs no step"):
        tiny_sd.check_paint(PaintRequest(params(strength=0.2), seed=3, init_image=init))


def test_a_lora_changes_the_picture_and_leaves_the_base_exact(tiny_sd: DiffusersPlugin) -> None:
    base = tiny_sd.paint(PaintRequest(params(), seed=9)).pixels
    styled = tiny_sd.paint(PaintRequest(params(loras=[{"name": "style", "weight": 1.0}]), seed=9))
    half = tiny_sd.paint(PaintRequest(params(loras=[{"name": "style", "weight": 0.3}]), seed=9)).pixels
    assert not np.array_equal(styled.pixels, base) and not np.array_equal(half, styled.pixels)
    assert styled.details["loras"][0]["name"] == "style" and len(styled.details["loras"][0]["hash"]) == 10
    assert np.array_equal(tiny_sd.paint(PaintRequest(params(), seed=9)).pixels, base)
    with pytest.raises(InvalidOptionsError, match="loras: 'other-model' does not fit tiny-sd"):
        tiny_sd.paint(PaintRequest(params(loras=[{"name": "other-model"}]), seed=9))
    with pytest.raises(InvalidOptionsError, match="loras: no LoRA named 'nope'"):
        tiny_sd.paint(PaintRequest(params(loras=[{"name": "nope"}]), seed=9))
    assert np.array_equal(tiny_sd.paint(PaintRequest(params(), seed=9)).pixels, base)  # still serving, unchanged


def test_stop_between_steps_returns_nothing(tiny_sd: DiffusersPlugin) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def stop_after_first(event: StepEvent) -> None:
        seen.append(event.step)
        cancel.set()

    with pytest.raises(GenerationCancelledError):
        tiny_sd.paint(PaintRequest(params(steps=5), seed=1), StepControl(stop_after_first, cancel))
    assert seen == [1]


def test_bad_sources_are_named(tmp_path: Path, tiny_sd_folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadFailedError, match="source: .*not a diffusers pipeline folder"):
        DiffusersPlugin("x", {"source": str(tmp_path / "empty")})
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(tmp_path / "bert.safetensors"))
    with pytest.raises(LoadFailedError, match="source: bert.safetensors is not a Stable Diffusion 1.x or SDXL"):
        DiffusersPlugin("x", {"source": str(tmp_path / "bert.safetensors")})
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoadFailedError, match="source: junk.safetensors is not a readable"):
        DiffusersPlugin("x", {"source": str(tmp_path / "junk.safetensors")})
    with pytest.raises(LoadFailedError, match="download, which is off"):
        DiffusersPlugin("x", {"source": "someone/some-model"})
    with pytest.raises(LoadFailedError, match="pickle"):
        (tmp_path / "old.ckpt").write_bytes(b"x")
        DiffusersPlugin("x", {"source": str(tmp_path / "old.ckpt")})
    # an SD 1.x single file (by its tensor names) with no config anywhere: says what to give
    save_file({"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(1),
               "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(1)},
              str(tmp_path / "sd15.safetensors"))
    gen = DiffusersPlugin("x", {"source": str(tmp_path / "sd15.safetensors")})
    assert gen.describe()["family"] == "sd1"
    with pytest.raises(LoadFailedError, match="configs and tokenizer of its family.*config:"):
        gen.load()


# ------------------------------------------------------------------ through the image service


def _files(ctx: Any) -> list[Path]:
    folder = ctx.store.data_dir / "images"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_service_saves_pngs_with_both_metadata_and_remakes_them(paint_ctx: Any) -> None:
    ctx = paint_ctx()
    from webui.services import images as svc
    from webui.services import infotext, png

    values = {"prompt": "a red cat, photo", "negative_prompt": "blurry", "width": SIZE, "height": SIZE, "steps": 3,
              "guidance": 6.5, "scheduler": "Euler a", "loras": [{"name": "style", "weight": 0.8}]}
    result = svc.paint(ctx, "local", "tiny-sd", values, seed=41, count=2)
    assert [i.seed for i in result.images] == [41, 42] and result.images[0].kind == "paint"
    first = Image.open(result.images[0].path)
    text = first.text["parameters"]
    assert text.splitlines()[0] == "a red cat, photo <lora:style:0.8>"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    last = text.splitlines()[2]
    for part in ("Steps: 3", "Sampler: Euler a", "CFG scale: 6.5", "Seed: 41", f"Size: {SIZE}x{SIZE}", "Model hash: ",
                 "Model: tiny-sd", "Lora hashes: \"style: "):
        assert part in last, part
    parsed = infotext.read(text)
    assert parsed["prompt"] == "a red cat, photo" and parsed["loras"] == [{"name": "style", "weight": 0.8}]
    assert parsed["fields"]["Model hash"] == png.read_meta(result.images[0].path)["weights_hash"][:10]
    meta = json.loads(first.text["aigc-studio"])
    assert meta["params"]["prompt"] == "a red cat, photo" and meta["seed"] == 41 and meta["mode"] == "text-to-image"
    # the second image, made again on its own from its PNG: the same bytes
    again = svc.rerun(ctx, "local", result.images[1].id)
    assert again.images[0].content_hash == result.images[1].content_hash
    assert svc.gallery(ctx, "local", model="tiny-sd").total == 3
    assert svc.gallery(ctx, "local", model="gan-mnist32").total == 0
    from webui.services import ratings

    ratings.rate(ctx, "local", "image", result.images[0].id, 1, "nice cat")  # ratings take the family too


def test_service_reads_an_a1111_png_and_remakes_it_with_a_model_of_that_name(paint_ctx: Any) -> None:
    ctx = paint_ctx()
    from webui.services import images as svc

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a blue dog <lora:style:0.5>\nNegative prompt: ugly, blurry\nSteps: 2, Sampler: Euler, "
                                f"CFG scale: 7, Seed: 12, Size: {SIZE}x{SIZE}, Model hash: 0123456789, Model: tiny-sd, "
                                "Version: v1.10.1")
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE)).save(buf, "PNG", pnginfo=info)
    meta = svc.png_info(buf.getvalue())
    assert meta["format"] == "a1111" and meta["seed"] == 12
    assert meta["params"] == {"prompt": "a blue dog", "negative_prompt": "ugly, blurry", "steps": 2, "guidance": 7.0,
                              "scheduler": "Euler", "width": SIZE, "height": SIZE,
                              "loras": [{"name": "style", "weight": 0.5}]}
    result = svc.regenerate(ctx, "local", meta)
    assert result.images[0].params["params"]["loras"] == [{"name": "style", "weight": 0.5}]
    assert "weights differ" in result.notice  # A1111's hash is not this model's


def test_service_bad_input_names_the_field_and_saves_nothing(paint_ctx: Any) -> None:
    ctx = paint_ctx()
    from webui.services import images as svc

    init = Image.new("RGB", (SIZE, SIZE), (200, 10, 10))
    cases = [
        ({"width": 36}, {}, "width"),
        ({"width": 4096}, {}, "width: at most 2048"),
        ({"steps": 0}, {}, "steps"),
        ({"guidance": 99}, {}, "guidance"),
        ({"strength": 1.5}, {"init_image": init}, "strength"),
        ({}, {"init_image": b"not an image at all"}, "init_image: That file is not an image"),
        ({}, {"init_image": init, "mask": Image.new("L", (16, 16), 255)}, "mask: it is 16×16 but the init image is 32×32"),
        ({}, {"init_image": init, "mask": Image.new("L", (SIZE, SIZE), 0)}, "mask: nothing is painted"),
        ({}, {"mask": Image.new("L", (SIZE, SIZE), 255)}, "mask: inpainting needs an init image"),
        ({"scheduler": "Heun"}, {}, "scheduler"),
        ({"loras": [{"name": "missing"}]}, {}, "loras"),
    ]
    for values, extra, message in cases:
        with pytest.raises(InvalidOptionsError, match=message):
            svc.paint(ctx, "local", "tiny-sd", {"width": SIZE, "height": SIZE, "steps": 2, **values}, 1, **extra)
    with pytest.raises(InvalidOptionsError, match="does not make images from a prompt"):
        svc.paint(ctx, "local", "gan-mnist32", {"prompt": "x"})
    assert _files(ctx) == [] and svc.gallery(ctx, "local").total == 0


def test_service_cancel_records_cancelled_and_keeps_nothing(paint_ctx: Any) -> None:
    ctx = paint_ctx()
    from sqlalchemy import select

    from storage.models import Generation
    from webui.services import images as svc

    cancel = threading.Event()
    with pytest.raises(GenerationCancelledError):
        svc.paint(ctx, "local", "tiny-sd", {"width": SIZE, "height": SIZE, "steps": 4}, 1,
                  control=StepControl(lambda e: cancel.set() if e.step == 2 else None, cancel))
    with ctx.store.begin() as s:
        assert [g.outcome for g in s.scalars(select(Generation))] == ["cancelled"]
    assert _files(ctx) == []
    result = svc.paint(ctx, "local", "tiny-sd", {"width": SIZE, "height": SIZE, "steps": 2}, 1)
    assert len(result.images) == 1  # and the app keeps serving
