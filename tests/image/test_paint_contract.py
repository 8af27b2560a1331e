"""The prompted-image contract: PaintRequest validation, capabilities, the per-step control, and
the image service recording a cancel between steps as `cancelled` with nothing saved.

GAN and VAE keep their (class, seed) contract unchanged; a stepping class-conditional plugin gets
the same control through `generate(..., control=)`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from generators.base import (
    CAP_CLASS_CONDITIONAL,
    CAP_IMAGE_TO_IMAGE,
    CAP_SEED,
    CAP_STEPS,
    CAP_TEXT_TO_IMAGE,
    GenerationCancelledError,
    GeneratorInfo,
    ImageEnd,
    ImageGenerator,
    ImageOutput,
    InvalidOptionsError,
    LoraWeight,
    PaintRequest,
    PromptParams,
    StepControl,
    StepEvent,
    StrictModel,
    validate_model,
)
from generators.image.plugin import GANPlugin


def test_prompt_params_name_the_field_that_is_wrong() -> None:
    for bad, field in [({"width": 500}, "width"), ({"height": 4104}, "height"), ({"steps": 0}, "steps"),
                       ({"guidance": 31}, "guidance"), ({"strength": 0}, "strength"), ({"strength": 1.5}, "strength"),
                       ({"loras": [{"name": "x", "weight": 9}]}, "loras.0.weight"), ({"sampler": "euler"}, "sampler")]:
        with pytest.raises(InvalidOptionsError, match=field):
            validate_model(PromptParams, bad, "setting")
    ok = validate_model(PromptParams, {"width": 64, "height": 128, "loras": [{"name": "style"}]})
    assert ok.loras == (LoraWeight(name="style", weight=1.0),)


def test_paint_request_mode_seeds_and_shape_checks() -> None:
    params = PromptParams(width=64, height=32)
    assert PaintRequest(params, seed=7, count=3).seeds == [7, 8, 9]
    assert PaintRequest(params, seed=2**32 - 1, count=2).seeds == [2**32 - 1, 0]
    assert PaintRequest(params, 1).mode == "text-to-image"
    init = np.zeros((32, 64, 3), np.uint8)
    assert PaintRequest(params, 1, init_image=init).mode == "image-to-image"
    req = PaintRequest(params, 1, init_image=init, mask=np.zeros((32, 64), np.uint8))
    assert req.mode == "inpaint" and req.init_image is init  # kept for the service (provenance ingredient)
    with pytest.raises(InvalidOptionsError, match="mask: .*64×32.*got 32×32"):
        PaintRequest(params, 1, init_image=init, mask=np.zeros((32, 32), np.uint8))
    with pytest.raises(InvalidOptionsError, match="mask: inpainting needs an init image"):
        PaintRequest(params, 1, mask=np.zeros((32, 64), np.uint8))
    with pytest.raises(InvalidOptionsError, match="init_image: it is 32×32"):
        PaintRequest(params, 1, init_image=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InvalidOptionsError, match="init_image: expected an RGB"):
        PaintRequest(params, 1, init_image="not an image")
    with pytest.raises(InvalidOptionsError, match="seed"):
        PaintRequest(params, -1)


def test_step_control_previews_when_due_and_cancels_between_steps() -> None:
    events: list[StepEvent] = []
    made: list[int] = []

    def preview(i: int) -> Any:
        made.append(i)
        return np.zeros((1, 8, 8, 3), np.uint8)

    control = StepControl(events.append, threading.Event(), preview_every=2)
    for i in range(1, 6):
        control.step(i, 5, lambda i=i: preview(i))
    assert [(e.step, e.total, e.preview is not None) for e in events] == [
        (1, 5, False), (2, 5, True), (3, 5, False), (4, 5, True), (5, 5, True)]
    assert made == [2, 4, 5]  # the preview is only decoded when due
    control.cancel.set()
    with pytest.raises(GenerationCancelledError, match="nothing was saved"):
        control.step(6, 6)


def test_gan_and_vae_keep_their_contract_and_refuse_prompts() -> None:
    gan = GANPlugin("gan", {"weights": "builtin:gan-mnist32"})
    assert CAP_CLASS_CONDITIONAL in gan.info.capabilities and gan.class_names == [str(d) for d in range(10)]
    with pytest.raises(InvalidOptionsError, match="does not make images from a prompt"):
        gan.paint(PaintRequest(PromptParams(), 1))


class _CountingParams(StrictModel):
    steps: int = 4


def make_stepping_class_plugin() -> type:
    """A class-conditional plugin that steps (like a digit diffusion model): each step reported."""

    class Stepping(ImageGenerator):
        info = GeneratorInfo("stepping", "image", "fake-diffusion", "steps for tests",
                             frozenset({CAP_CLASS_CONDITIONAL, CAP_SEED, CAP_STEPS}), _CountingParams, StrictModel)

        @property
        def class_names(self) -> list[str]:
            return ["a", "b"]

        @property
        def image_size(self) -> tuple[int, int, int]:
            return 8, 8, 1

        def _load(self, progress: Any) -> None:
            pass

        def _unload(self) -> None:
            pass

        def sample(self, ends: Any, params: Any, control: StepControl | None = None) -> ImageOutput:
            control = control or StepControl()
            x = np.zeros((len(ends), 8, 8, 1), np.uint8)
            for i in range(1, params.steps + 1):
                x = x + 10
                control.step(i, params.steps, lambda x=x: np.repeat(x, 3, axis=-1))
            return ImageOutput(x, "0" * 16)

    return Stepping


def _ctx_with(make_ctx: Any, plugin: type, name: str) -> Any:
    from generators.registry import ModelSpec

    ctx = make_ctx()
    ctx.registry.plugins[plugin.info.plugin] = plugin
    ctx.registry.add(ModelSpec(name, plugin.info.plugin, {}))
    return ctx


def _generations(ctx: Any) -> list[tuple[str, str]]:
    from sqlalchemy import select

    from storage.models import Generation

    with ctx.store.begin() as s:
        return [(g.generator, g.outcome) for g in s.scalars(select(Generation))]


def test_service_passes_the_control_and_records_a_cancel_with_nothing_saved(make_ctx: Any) -> None:
    from webui.services import images as svc

    ctx = _ctx_with(make_ctx, make_stepping_class_plugin(), "stepper")
    seen: list[StepEvent] = []
    result = svc.generate(ctx, "local", "stepper", "a", 5, 2, {"steps": 3}, control=StepControl(seen.append, preview_every=1))
    assert [e.step for e in seen] == [1, 2, 3] and seen[-1].preview.shape == (2, 8, 8, 3)
    assert len(result.images) == 2 and int(np.asarray(result.grid).max()) == 255  # white gutters around 30-grey tiles

    cancel = threading.Event()

    def stop_at_two(event: StepEvent) -> None:
        if event.step == 2:
            cancel.set()

    files_before = sorted((ctx.store.data_dir / "images").iterdir())
    with pytest.raises(GenerationCancelledError):
        svc.generate(ctx, "local", "stepper", "a", 5, 2, {"steps": 3}, control=StepControl(stop_at_two, cancel))
    assert sorted((ctx.store.data_dir / "images").iterdir()) == files_before
    assert svc.gallery(ctx, "local").total == 2
    assert sorted(_generations(ctx)) == [("stepper", "cancelled"), ("stepper", "ok")]


def test_class_sampling_service_refuses_a_prompted_plugin(make_ctx: Any) -> None:
    from webui.services import images as svc

    class Prompted(ImageGenerator):
        info = GeneratorInfo("prompted", "image", "fake", "prompted for tests",
                             frozenset({CAP_TEXT_TO_IMAGE, CAP_IMAGE_TO_IMAGE}), PromptParams, StrictModel)

        def _load(self, progress: Any) -> None:
            pass

        def _unload(self) -> None:
            pass

    ctx = _ctx_with(make_ctx, Prompted, "painter")
    with pytest.raises(InvalidOptionsError, match="from a prompt, not from a class"):
        svc.generate(ctx, "local", "painter", None, 1)
    gen = ctx.registry.get("painter")
    init = np.zeros((512, 512, 3), np.uint8)
    with pytest.raises(InvalidOptionsError, match="cannot do inpaint; it can do: image-to-image, text-to-image"):
        gen.check_paint(PaintRequest(PromptParams(), 1, init_image=init, mask=np.zeros((512, 512), np.uint8)))
    with pytest.raises(InvalidOptionsError, match="loras: .*does not take LoRA"):
        gen.check_paint(PaintRequest(PromptParams(loras=[{"name": "x"}]), 1))
    gen.check_paint(PaintRequest(PromptParams(), 1))
    assert ImageEnd(0, 1).seed == 1
