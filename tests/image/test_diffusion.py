"""The digit diffusion model, its training through the shared command, and its plugin — on tiny random-weight
models built here (the shipped weights are checked in test_default_weights.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generators.base import (
    CAP_STEPS,
    CAP_TRAJECTORY,
    GenerationCancelledError,
    ImageEnd,
    InvalidOptionsError,
    StepControl,
    validate_model,
)
from generators.image.checkpoint import load_model, save_model
from generators.image.diffusion import SCHEDULERS, DiffusionConfig, DigitDiffusion, min_snr_weight
from generators.image.diffusion_plugin import SCHEDULER_NAMES, DiffusionParams, DigitDiffusionPlugin, auto_threads
from generators.image.train import TrainOptions, train

TINY = {"base_channels": 8, "channel_mults": "1,2", "norm_groups": 4}


def tiny_model(seed: int = 0) -> DigitDiffusion:
    torch.manual_seed(seed)
    return DigitDiffusion(DiffusionConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("diffusion") / "tiny-diffusion"
    save_model(folder, tiny_model(), "diffusion", [str(d) for d in range(10)], True, {"command": "test"})
    return folder


@pytest.fixture
def plugin(tiny_folder: Path) -> DigitDiffusionPlugin:
    p = DigitDiffusionPlugin("tiny-diffusion", {"weights": str(tiny_folder)})
    p.load()
    return p


def params(**values: object) -> DiffusionParams:
    return validate_model(DiffusionParams, {"steps": 4, **values})


# ------------------------------------------------------------------ the model


def test_scheduler_names_match_and_every_scheduler_samples_in_range() -> None:
    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
    model = tiny_model()
    noise = model.initial_noise([torch.Generator().manual_seed(s) for s in (1, 2)])
    for name in SCHEDULERS:
        seen: list[tuple[int, int]] = []
        out = model.sample(torch.tensor([3, 7]), noise, steps=5, guidance=2.0, scheduler=name,
                           callback=lambda i, n, x, x0: seen.append((i, n)),  # noqa: B023
                           step_generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
        assert out.shape == (2, 1, 32, 32) and 0 <= float(out.min()) and float(out.max()) <= 1, name
        assert seen == [(i, 5) for i in range(5)], name
    with pytest.raises(ValueError, match="unknown scheduler"):
        model.make_scheduler("LMS")


def test_class_weights_equal_class_ids_for_one_hot_weights() -> None:
    model = tiny_model()
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([10, 500, 990])
    ids = torch.tensor([0, 4, 10])  # 10 = the null class
    with torch.no_grad():
        by_id = model(x, t, ids)
        by_weight = model(x, t, torch.nn.functional.one_hot(ids, 11).float())
    assert torch.allclose(by_id, by_weight, atol=1e-5)


def test_guidance_one_and_zero_run_one_pass_and_differ_from_guided() -> None:
    model = tiny_model()
    batches: list[int] = []
    hook = model.unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    noise = model.initial_noise([torch.Generator().manual_seed(5)])
    outs = {g: model.sample(torch.tensor([2]), noise, steps=2, guidance=g) for g in (0.0, 1.0, 3.0)}
    hook.remove()
    assert batches == [1, 1, 1, 1, 2, 2]  # guidance 3 runs class and null class in one batch
    assert not torch.equal(outs[1.0], outs[3.0]) and not torch.equal(outs[0.0], outs[1.0])


def test_channels_last_unet_predicts_what_the_plain_one_does_and_saves_plain_weights(tmp_path: Path) -> None:
    plain, fast = tiny_model(), tiny_model().use_channels_last()
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.unet.conv_in.weight.is_contiguous()
    x, t, ids = torch.randn(4, 1, 32, 32), torch.tensor([10, 300, 700, 990]), torch.tensor([0, 4, 9, 10])
    with torch.no_grad():
        expected, got = plain(x, t, ids), fast(x, t, ids)
        mixed = fast(x, t, torch.nn.functional.one_hot(ids, 11).float())
    assert got.is_contiguous() and torch.allclose(got, expected, atol=1e-5) and torch.allclose(mixed, expected, atol=1e-5)
    save_model(tmp_path / "saved", fast, "diffusion", [str(d) for d in range(10)])
    for (key, left), right in zip(plain.state_dict().items(), load_model(tmp_path / "saved").model.state_dict().values(),
                                  strict=True):
        assert torch.equal(left, right), key
    assert not fast.use_channels_last(False).unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_min_snr_weights_are_bounded_by_one() -> None:
    alphas = DigitDiffusion(DiffusionConfig(**TINY)).make_scheduler("DDPM").alphas_cumprod
    t = torch.arange(0, 1000, 37)
    for kind in ("epsilon", "v_prediction"):
        w = min_snr_weight(alphas, t, 5.0, kind)
        assert bool(((w > 0) & (w <= 1 + 1e-6)).all())
    assert min_snr_weight(alphas, torch.tensor([999]), 5.0, "epsilon").item() == pytest.approx(1.0)


# ------------------------------------------------------------------ the plugin


def test_plugin_declares_the_diffusion_family_and_checks_its_settings(plugin: DigitDiffusionPlugin) -> None:
    info = plugin.info
    assert info.family == "diffusion" and {CAP_STEPS, CAP_TRAJECTORY} <= info.capabilities
    assert plugin.schedulers()[0] == "DPM++ 2M" and plugin.image_size == (32, 32, 1)
    with pytest.raises(InvalidOptionsError, match="scheduler"):
        validate_model(DiffusionParams, {"scheduler": "PLMS"})
    with pytest.raises(InvalidOptionsError, match="steps"):
        validate_model(DiffusionParams, {"steps": 0})
    with pytest.raises(InvalidOptionsError, match="guidance"):
        validate_model(DiffusionParams, {"guidance": 11})
    with pytest.raises(InvalidOptionsError, match="Class 10 does not exist"):
        plugin.sample([ImageEnd(10, 1)], params())


def test_image_i_is_the_same_alone_or_in_a_batch(plugin: DigitDiffusionPlugin) -> None:
    for scheduler in ("DPM++ 2M", "Euler a"):  # a deterministic and a stochastic one
        batch = plugin.sample([ImageEnd(i % 10, 40 + i) for i in range(5)], params(scheduler=scheduler)).pixels
        alone = plugin.sample([ImageEnd(3, 43)], params(scheduler=scheduler)).pixels
        assert batch.shape == (5, 32, 32, 1) and batch.dtype == np.uint8
        assert np.array_equal(batch[3], alone[0]), scheduler
        assert not np.array_equal(batch[0], batch[1])


def test_the_fast_path_is_the_default_and_draws_the_plain_paths_images(plugin: DigitDiffusionPlugin,
                                                                       tiny_folder: Path) -> None:
    plain = DigitDiffusionPlugin("plain", {"weights": str(tiny_folder), "fast_path": False})
    plain.load()
    assert plugin.model.channels_last and not plain.model.channels_last
    ends = [ImageEnd(i % 10, 70 + i) for i in range(6)]
    for scheduler in ("DPM++ 2M", "Euler a"):
        fast_pixels, plain_pixels = (p.sample(ends, params(scheduler=scheduler)).pixels.astype(np.int16)
                                     for p in (plugin, plain))
        assert np.abs(fast_pixels - plain_pixels).max() <= 1, scheduler  # same arithmetic, other rounding at most
        assert np.array_equal(plugin.sample(ends, params(scheduler=scheduler)).pixels, fast_pixels)  # deterministic


def test_auto_threads_drop_to_one_only_on_a_busy_machine() -> None:
    assert auto_threads(2, 0.4) == 2 and auto_threads(2, 2.3) == 2  # idle, or busy with our own run
    assert auto_threads(2, 3.1) == 1 and auto_threads(4, 12.0) == 1  # other programs fill the cores
    assert auto_threads(1, 0.0) == 1 and auto_threads(2) in (1, 2)


def test_the_thread_count_changes_no_pixel_and_the_lane_keeps_its_own(tiny_folder: Path) -> None:
    from generators.compute import lane

    before = lane().call(torch.get_num_threads)
    seen: list[int] = []
    pixels = []
    for threads in (1, 2):
        p = DigitDiffusionPlugin(f"t{threads}", {"weights": str(tiny_folder), "threads": threads})
        p.load()
        with p._sampling_threads() as used:
            seen.append(used)
        pixels.append(p.sample([ImageEnd(i % 10, 90 + i) for i in range(4)], params(steps=3)).pixels)
    assert seen == [1, 2] and np.array_equal(pixels[0], pixels[1])
    assert lane().call(torch.get_num_threads) == before


def test_steps_are_reported_with_previews_and_stop_ends_between_two_steps(plugin: DigitDiffusionPlugin) -> None:
    events = []
    control = StepControl(on_step=events.append, preview_every=2)
    plugin.sample([ImageEnd(1, 1), ImageEnd(2, 2)], params(steps=5), control=control)
    assert [(e.step, e.total) for e in events] == [(i, 5) for i in range(1, 6)]
    assert [e.preview is not None for e in events] == [False, True, False, True, True]
    assert events[1].preview.shape == (2, 32, 32, 3) and events[1].preview.dtype == np.uint8

    cancel = threading.Event()
    stopped_at = []

    def stop_after_two(event) -> None:  # type: ignore[no-untyped-def]
        stopped_at.append(event.step)
        if event.step == 2:
            cancel.set()

    with pytest.raises(GenerationCancelledError):
        plugin.sample([ImageEnd(1, 1)], params(steps=10), control=StepControl(on_step=stop_after_two, cancel=cancel))
    assert stopped_at == [1, 2]


def test_trajectory_goes_from_the_seed_noise_to_the_sampled_image(plugin: DigitDiffusionPlugin) -> None:
    p = params(steps=6)
    out = plugin.trajectory(ImageEnd(4, 9), p, [6, 0, 3, 3])
    assert out.details["steps"] == [0, 3, 6] and out.pixels.shape == (6, 32, 32, 1)
    image = plugin.sample([ImageEnd(4, 9)], p).pixels[0]
    assert np.array_equal(out.pixels[2], image)  # x_t after the last step is the image
    assert np.array_equal(out.pixels[5], image)  # and so is the last estimate
    noise = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(9))
    expected = ((noise.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)[0, 0].numpy()
    assert np.array_equal(out.pixels[0, ..., 0], expected)  # step 0 is the seed's noise
    with pytest.raises(InvalidOptionsError, match="from 0 to 6"):
        plugin.trajectory(ImageEnd(4, 9), p, [0, 7])


def test_interpolation_walks_between_two_seeds_and_classes(plugin: DigitDiffusionPlugin) -> None:
    p = params(steps=3)
    out = plugin.interpolate(ImageEnd(1, 5), ImageEnd(8, 6), 4, p).pixels
    assert out.shape == (4, 32, 32, 1)
    assert np.array_equal(out[0], plugin.sample([ImageEnd(1, 5)], p).pixels[0])


# ------------------------------------------------------------------ training through the shared command


def _digit_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            pixels = (rng.random((32, 32)) * 60).astype(np.uint8)
            pixels[8:24, 12:20 if cls == "a" else 28] = 255
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_train_command_writes_curves_grids_checkpoint_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    data = _digit_folder(tmp_path / "digits")
    overrides = {**{k: str(v) for k, v in TINY.items()}, "sample_steps": "2", "warmup_steps": "2"}

    def run(out: Path, epochs: int, resume: bool = False) -> None:
        train(TrainOptions("diffusion", str(data), 32, epochs, out, batch_size=4, seed=3, device="cpu", resume=resume,
                           threads=None, overrides={} if resume else overrides, progress=False))

    run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)
    run(tmp_path / "resumed", 2, resume=True)
    for name in ("checkpoint.pt", "curves.png", "samples_epoch001.png", "samples_epoch002.png", "model.safetensors"):
        assert (tmp_path / "resumed" / name).is_file(), name
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    assert a.model_type == "diffusion" and a.class_names == ["a", "b"] and a.training["epochs"] == 2
    for (key, left), right in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(left, right), key


# ------------------------------------------------------------------ the image service (shipped digit diffusion)


def test_trajectory_is_saved_as_strip_and_gif_and_made_again_byte_for_byte(image_ctx) -> None:
    from storage.models import ImageRecord
    from webui.services import images as svc
    from webui.services import png

    ctx = image_ctx()
    settings = {"steps": 6, "guidance": 2.0, "scheduler": "DDIM"}
    result = svc.trajectory(ctx, "ann", "diffusion-mnist32", "7", "21", settings, at_steps="0, 3, 6")
    item = result.images[0]
    assert item.kind == "trajectory" and item.seed == 21 and item.label == 7 and item.gif_path.is_file()
    with Image.open(item.path) as strip:
        assert strip.size == (3 * 34 + 2, 2 * 34 + 2)  # x_t row and estimate row, three steps each
    with Image.open(item.gif_path) as gif:
        assert gif.n_frames >= 3
    meta = png.read_meta(item.path)
    assert meta["kind"] == "trajectory" and meta["at_steps"] == [0, 3, 6] and meta["params"]["scheduler"] == "DDIM"
    again = svc.regenerate(ctx, "ann", meta)
    assert again.images[0].content_hash == item.content_hash
    assert "denoising steps 0, 3, 6" in item.caption
    even = svc.trajectory(ctx, "ann", "diffusion-mnist32", "7", "21", settings, frames=4)
    assert even.images[0].params["at_steps"] == [0, 2, 4, 6]
    with ctx.store.begin() as s:
        assert s.query(ImageRecord).filter_by(kind="trajectory").count() == 3


def test_bad_trajectory_requests_say_what_to_change(image_ctx) -> None:
    from webui.services import images as svc

    ctx = image_ctx()
    with pytest.raises(InvalidOptionsError, match="no denoising trajectory"):
        svc.trajectory(ctx, "ann", "gan-mnist32", "1", "1")
    with pytest.raises(InvalidOptionsError, match="trajectory step must be from 0 to 5"):
        svc.trajectory(ctx, "ann", "diffusion-mnist32", "1", "1", {"steps": 5}, at_steps="0, 9")
    with pytest.raises(InvalidOptionsError, match="whole number"):
        svc.trajectory(ctx, "ann", "diffusion-mnist32", "1", "1", {"steps": 5}, at_steps="0, two")
    with pytest.raises(InvalidOptionsError, match="scheduler"):
        svc.generate(ctx, "ann", "diffusion-mnist32", "1", "1", 1, {"scheduler": "nope"})
    assert not list((ctx.store.data_dir / "images").glob("*"))


def test_stop_between_steps_saves_nothing_and_records_cancelled(image_ctx) -> None:
    from sqlalchemy import select

    from storage.models import Generation
    from webui.services import images as svc

    ctx = image_ctx()
    cancel = threading.Event()
    steps_seen: list[int] = []

    def on_step(event) -> None:  # type: ignore[no-untyped-def]
        steps_seen.append(event.step)
        cancel.set()

    with pytest.raises(GenerationCancelledError):
        svc.generate(ctx, "ann", "diffusion-mnist32", "3", "5", 4, {"steps": 10},
                     control=StepControl(on_step=on_step, cancel=cancel))
    assert steps_seen == [1]
    assert not (ctx.store.data_dir / "images").exists() or not list((ctx.store.data_dir / "images").glob("*"))
    with ctx.store.begin() as s:
        assert s.scalars(select(Generation)).one().outcome == "cancelled"
    done = svc.generate(ctx, "ann", "diffusion-mnist32", "3", "5", 2, {"steps": 3})
    assert [i.seed for i in done.images] == [5, 6] and done.images[0].params["params"]["steps"] == 3
