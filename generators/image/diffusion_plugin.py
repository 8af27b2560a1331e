"""The digit diffusion plugin (entry point ``digit-diffusion``): the diffusion family's CPU default.

Loads an exported ``diffusion`` model folder (``builtin:diffusion-mnist32`` is the one trained by
this project) and draws class-conditional images with classifier-free guidance and a choice of
diffusers schedulers. Image *i* starts from the noise of its own seed (and a stochastic scheduler
draws its fresh noise from that seed too), so any image of a batch can be made again on its own.

Beyond sampling it shows what diffusion does: ``trajectory`` returns x_t at chosen steps and the
model's estimate of the clean image at each of them. Every step is reported to a ``StepControl``
(progress, a preview of the current estimate, cancel between two steps).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..base import (
    CAP_CLASS_CONDITIONAL,
    CAP_INTERPOLATE,
    CAP_SEED,
    CAP_STEPS,
    CAP_TRAJECTORY,
    GeneratorInfo,
    ImageEnd,
    ImageOutput,
    InvalidOptionsError,
    StepControl,
    StrictModel,
)
from .plugin import ImageLoadOptions, _TorchImagePlugin

# the names of diffusion.SCHEDULERS (kept here too so importing this module needs no torch)
SCHEDULER_NAMES = ("DPM++ 2M", "DDIM", "Euler", "Euler a", "UniPC", "DDPM")
SchedulerName = Literal["DPM++ 2M", "DDIM", "Euler", "Euler a", "UniPC", "DDPM"]
MAX_STEPS = 200
DEFAULT_GUIDANCE = 1.5  # measured: accuracy 0.987, FD 10.35 (guidance 2: 0.996, 17.67); see the model card


class DiffusionParams(StrictModel):
    steps: int = Field(25, ge=1, le=MAX_STEPS, description="denoising steps: more = slower, a little cleaner")
    guidance: float = Field(DEFAULT_GUIDANCE, ge=0.0, le=10.0,
                            description="classifier-free guidance: 1 = the class alone, 0 = ignore the class, "
                                        "higher = more typical of the class, less varied")
    scheduler: SchedulerName = Field("DPM++ 2M", description="the sampler that walks from noise to the image")


def auto_threads(lane_threads: int, load_average: float | None = None) -> int:
    """The threads a sampling run should use: all the lane's, or 1 when the machine is already busy.

    A UNet forward is ~300 short parallel regions, each ending at a barrier of the whole OpenMP team.
    When other programs keep the cores busy, one of the team's threads is often descheduled and every
    barrier waits for the kernel to run it again, and on a loaded 2-core machine one thread ran a forward
    several times faster than two (the README's speed section has the figures). So: more runnable work
    than cores over the last minute (our own run counts ``lane_threads`` of it) -> 1 thread."""
    if lane_threads <= 1:
        return 1
    if load_average is None:
        try:
            load_average = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return lane_threads
    return 1 if load_average > lane_threads + 0.5 else lane_threads


class DiffusionLoadOptions(ImageLoadOptions):
    fast_path: bool = Field(True, description="on a CPU, run the UNet in channels-last memory layout (oneDNN's own: no "
                            "reorder around every convolution) on the number of threads below; off: the plain "
                            "layout on the compute lane's threads (for comparing)")
    threads: int = Field(0, ge=0, le=256, description="torch CPU threads while sampling (fast path): 0 = auto, all "
                         "of the lane's threads unless the load average says other programs already keep the "
                         "cores busy, then 1 (the images are the same either way)")


class DigitDiffusionPlugin(_TorchImagePlugin):
    info = GeneratorInfo(
        plugin="digit-diffusion",
        modality="image",
        family="diffusion",
        description="Class-conditional pixel diffusion (diffusers UNet2DModel, v-prediction, classifier-free "
                    "guidance); DDIM / Euler / DPM++ 2M / UniPC schedulers; shows its denoising trajectory",
        capabilities=frozenset({CAP_CLASS_CONDITIONAL, CAP_SEED, CAP_STEPS, CAP_INTERPOLATE, CAP_TRAJECTORY}),
        params=DiffusionParams,
        load_options=DiffusionLoadOptions,
    )
    model_type = "diffusion"

    def _load(self, progress: Any) -> None:
        super()._load(progress)
        if self.options.fast_path and self._device == "cpu":
            self._model.use_channels_last()

    @property
    def model(self) -> Any:
        """The loaded denoiser (a ``DigitDiffusion``), for benchmarks and notebooks."""
        self._require_loaded()
        return self._model

    @contextlib.contextmanager
    def _sampling_threads(self) -> Iterator[int]:
        """Run the block on the fast path's thread count (``threads``, or ``auto_threads``); the lane's own
        count is restored after, for the other plugins' work."""
        import torch

        before = torch.get_num_threads()
        want = before
        if self.options.fast_path and self._device == "cpu":
            want = self.options.threads or auto_threads(before)
        if want == before:
            yield before
            return
        torch.set_num_threads(want)
        try:
            yield want
        finally:
            torch.set_num_threads(before)

    def schedulers(self) -> list[str]:
        return list(SCHEDULER_NAMES)

    # -- noise per seed
    def _generators(self, seeds: Sequence[int]) -> list[Any]:
        import torch

        return [torch.Generator().manual_seed(seed) for seed in seeds]

    def _check_ends(self, ends: Sequence[ImageEnd]) -> None:
        from .plugin import MAX_SEED

        if not ends:
            raise InvalidOptionsError("Ask for at least one image.")
        for end in ends:
            self._check_label(end.label)
            if not 0 <= end.seed <= MAX_SEED:
                raise InvalidOptionsError(f"Seed {end.seed} is out of range 0–{MAX_SEED}.")

    def _run(self, labels: Any, generators: list[Any], params: DiffusionParams, control: StepControl,
             callback: Any = None) -> Any:
        """Sample from each generator's noise (the same generator then feeds a stochastic scheduler)."""
        import torch

        model = self._model
        noise = model.initial_noise(generators)

        def on_step(i: int, n: int, x_t: Any, x0: Any) -> None:
            if callback is not None:
                callback(i, n, x_t, x0)
            control.step(i + 1, n, lambda: self._to_rgb_uint8((x0.clamp(-1, 1) + 1) / 2))

        with torch.inference_mode(), self._sampling_threads():
            return model.sample(labels.to(self._device), noise, steps=params.steps, guidance=params.guidance,
                                scheduler=params.scheduler, callback=on_step, step_generators=generators)

    def _to_rgb_uint8(self, images: Any) -> Any:
        pixels = self._to_uint8(images)
        return pixels.repeat(3, axis=3) if pixels.shape[3] == 1 else pixels

    # -- the contract's inner calls
    def _sample(self, ends: Sequence[ImageEnd], params: BaseModel, control: StepControl) -> ImageOutput:
        import torch

        self._check_ends(ends)
        labels = torch.tensor([end.label for end in ends])
        images = self._run(labels, self._generators([end.seed for end in ends]), params, control)
        return ImageOutput(self._to_uint8(images), self.weights_hash)

    def _latent(self, seed: int, params: BaseModel) -> Any:
        """The starting noise of a seed, flattened (1, C*S*S), for the latent walk of ``interpolate``."""
        return self._model.initial_noise(self._generators([seed])).flatten(1)

    def _decode(self, z: Any, y: Any, params: DiffusionParams) -> Any:
        """Noise rows (N, C*S*S) and class ids (N,) or class weights (N, K) -> images (the interpolation path)."""
        import torch

        h, w, c = self.image_size
        if y.ndim == 2:  # class mixes: add the (empty) weight of the null class
            y = torch.cat([y, torch.zeros(len(y), 1, dtype=y.dtype, device=y.device)], dim=1)
        generators = self._generators([0] * len(z))  # stochastic schedulers: the same fresh noise along the walk
        with self._sampling_threads():
            return self._model.sample(y, z.view(-1, c, h, w), steps=params.steps, guidance=params.guidance,
                                      scheduler=params.scheduler, step_generators=generators)

    def _trajectory(self, end: ImageEnd, params: BaseModel, at_steps: Sequence[int],
                    control: StepControl) -> ImageOutput:
        """One image's way from noise: x_t after each of ``at_steps`` steps (0 = the starting noise, ``steps`` =
        the image), then the model's estimate of the clean image at those same steps.

        Returns 2 × len(at_steps) images: the x_t row first, then the estimate row.
        """
        import torch

        self._check_ends([end])
        total = params.steps
        wanted = sorted(set(int(s) for s in at_steps))
        if not wanted or wanted[0] < 0 or wanted[-1] > total:
            raise InvalidOptionsError(f"Trajectory steps must be from 0 to {total} (the number of steps); got {list(at_steps)}.")
        generators = self._generators([end.seed])
        x_rows: dict[int, Any] = {}
        x0_rows: dict[int, Any] = {}
        noise_preview = self._model.initial_noise(self._generators([end.seed]))
        if 0 in wanted:
            x_rows[0] = noise_preview

        def keep(i: int, n: int, x_t: Any, x0: Any) -> None:
            if i in wanted:
                x0_rows[i] = x0.detach().cpu().clone()
            if i + 1 in wanted:
                x_rows[i + 1] = x_t.detach().cpu().clone()

        final = self._run(torch.tensor([end.label]), generators, params, control, keep)
        x0_rows[total] = final * 2 - 1  # after the last step the estimate is the image itself
        to_unit = [(x_rows[s].clamp(-1, 1) + 1) / 2 for s in wanted] + [(x0_rows[s].clamp(-1, 1) + 1) / 2 for s in wanted]
        pixels = self._to_uint8(torch.cat(to_unit))
        return ImageOutput(pixels, self.weights_hash, {"steps": wanted, "rows": ["x_t", "estimate of x_0"]})
