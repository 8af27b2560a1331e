"""A class-conditional pixel diffusion model for small images (the digit diffusion model).

The denoiser is diffusers' ``UNet2DModel`` with a class embedding. Classifier-free guidance uses
one extra class, the *null* class (index ``num_classes``), which training substitutes for the
true label with probability ``p_uncond``; at sampling time the guided prediction is
``uncond + guidance * (cond - uncond)`` (guidance 1 = plain conditional sampling).

To keep it cheap on a CPU the UNet runs on a space-to-depth view of the image: a 32×32×1 digit
becomes 16×16×4 (``patch`` 2, ``pixel_unshuffle``) and the prediction is folded back
(``pixel_shuffle``). Noise, schedulers and outputs all live in pixel space at full size.

Sampling runs any of the diffusers schedulers in :data:`SCHEDULERS` built from the model's own
training schedule (``scheduler_config``), calls a per-step callback (progress, cancel, the
denoising trajectory) and draws each image's starting noise from its own generator, so image *i*
is the same whatever batch it was made in.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# name shown to people -> (diffusers class name, extra config); all built from the training schedule
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DDIM": ("DDIMScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
}
DEFAULT_SCHEDULER = "DPM++ 2M"
STOCHASTIC = frozenset({"Euler a", "DDPM"})  # add fresh noise at every step

# step index (0-based), number of steps, the sample after the step, the model's estimate of the clean image
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class DiffusionConfig:
    size: int = 32
    channels: int = 1
    num_classes: int = 10
    base_channels: int = 32          # UNet width at the first (highest) resolution
    channel_mults: str = "1,2,4"     # width multipliers per resolution (comma-separated)
    layers_per_block: int = 1
    norm_groups: int = 8
    patch: int = 2                   # space-to-depth factor before the UNet (1 = none)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"  # well conditioned at every noise level (x_0 = √ᾱ x_t − √(1−ᾱ) v)

    def __post_init__(self) -> None:
        assert self.size % self.patch == 0, "size must be a multiple of patch"
        assert self.channels in (1, 3) and self.num_classes >= 1
        assert self.prediction_type in ("epsilon", "v_prediction")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * int(m) for m in self.channel_mults.split(","))

    @property
    def null_class(self) -> int:
        return self.num_classes


class DigitDiffusion(nn.Module):
    """The denoiser: (x_t in [-1, 1] pixel space, t, class ids or class weights) -> predicted noise (or v)."""

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.config = config
        widths = config.widths
        p = config.patch
        self.unet = UNet2DModel(
            sample_size=config.size // p, in_channels=config.channels * p * p, out_channels=config.channels * p * p,
            block_out_channels=widths, layers_per_block=config.layers_per_block,
            down_block_types=("DownBlock2D",) * len(widths), up_block_types=("UpBlock2D",) * len(widths),
            num_class_embeds=config.num_classes + 1, norm_num_groups=config.norm_groups,
            attention_head_dim=min(32, widths[-1]),
        )
        self.channels_last = False  # see use_channels_last

    def use_channels_last(self, enabled: bool = True) -> DigitDiffusion:
        """Keep the UNet's weights, and feed it its input, in channels-last (NHWC) memory layout.

        oneDNN's CPU convolutions work in that layout: with the default (NCHW) one every convolution
        reorders its input, weights and output to and from it. Same arithmetic, so the same images up
        to float rounding. Saving (``save_model``) writes contiguous tensors either way."""
        self.unet.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S), t (B,) ints, labels (B,) class ids (``null_class`` = unconditional)
        or (B, num_classes + 1) weights that mix the class embeddings (interpolation)."""
        p = self.config.patch
        h = F.pixel_unshuffle(x, p) if p > 1 else x
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        if labels.ndim == 2:  # mixed classes: pass the blended embedding through the UNet's hook
            emb = labels.to(self.unet.class_embedding.weight.dtype) @ self.unet.class_embedding.weight
            out = _with_class_embedding(self.unet, h, t, emb)
        else:
            out = self.unet(h, t, class_labels=labels).sample
        out = F.pixel_shuffle(out, p) if p > 1 else out
        return out.contiguous()

    # ------------------------------------------------------------------ schedules

    def scheduler_config(self) -> dict[str, Any]:
        return {"num_train_timesteps": self.config.num_train_timesteps, "beta_schedule": self.config.beta_schedule,
                "prediction_type": self.config.prediction_type}

    def make_scheduler(self, name: str = DEFAULT_SCHEDULER) -> Any:
        import diffusers

        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
        class_name, extra = SCHEDULERS[name]
        config = {**self.scheduler_config(), **extra}
        if class_name in ("DDIMScheduler", "DDPMScheduler"):
            config["clip_sample"] = False  # the x_0 clip to [-1, 1] is done by the sampler for every scheduler
        if class_name in ("DDIMScheduler",):
            config["timestep_spacing"] = "trailing"  # the first step starts from pure noise
        if class_name in ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"):
            config["timestep_spacing"] = "trailing"
        return getattr(diffusers, class_name)(**config)

    # ------------------------------------------------------------------ sampling

    def initial_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(N, C, S, S) standard normal noise, row i from generator i (a per-image seed)."""
        c, s = self.config.channels, self.config.size
        return torch.cat([torch.randn(1, c, s, s, generator=g) for g in generators])

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, noise: torch.Tensor, steps: int = 25, guidance: float = 2.0,
               scheduler: str = DEFAULT_SCHEDULER, callback: StepCallback | None = None,
               step_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Images in [0, 1], (N, C, S, S), from class ids (N,) or class weights (N, K+1) and starting noise (N, C, S, S).

        ``guidance`` 1 runs the conditional model only, 0 the unconditional one; any other value runs
        both in one batch and extrapolates ``uncond + guidance * (cond - uncond)``. ``step_generators``
        (one per image) feed stochastic schedulers (Euler a, DDPM) so their fresh noise is per image
        too. ``callback(i, n, x_t, x0)`` runs after step i (0-based) of n with the sample after the
        step and the model's estimate of the clean image at that step, both in [-1, 1] image scale;
        an exception raised from it stops the loop (cancel).
        """
        device = next(self.parameters()).device
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(steps, device=device)
        alphas_cumprod = sched.alphas_cumprod.to(device)
        sigma_space = scheduler in ("Euler", "Euler a")  # x is scaled by sqrt(sigma^2 + 1) there
        n = noise.shape[0]
        x = noise.to(device) * sched.init_noise_sigma
        cond = labels.to(device)
        null = torch.full((n,), self.config.null_class, device=device, dtype=torch.long)
        if cond.ndim == 2:
            null = F.one_hot(null, self.config.num_classes + 1).to(cond.dtype)
        guided = guidance not in (0.0, 1.0)
        classes = torch.cat([cond, null]) if guided else (null if guidance == 0.0 else cond)
        timesteps = sched.timesteps
        for i, t in enumerate(timesteps):
            model_in = sched.scale_model_input(x, t)  # the variance-preserving x_t
            t_batch = t.expand(2 * n if guided else n).to(device)
            out = self(torch.cat([model_in, model_in]) if guided else model_in, t_batch, classes)
            if guided:
                out_cond, out_uncond = out.chunk(2)
                out = out_uncond + guidance * (out_cond - out_uncond)
            kwargs: dict[str, Any] = {}
            if step_generators is not None and scheduler in STOCHASTIC:
                kwargs["generator"] = list(step_generators)  # diffusers' randn_tensor: one generator per row
            x = sched.step(out, t, x, return_dict=True, **kwargs).prev_sample
            if callback is not None:
                a = alphas_cumprod[int(round(float(t)))]
                x0 = a.sqrt() * model_in - (1 - a).sqrt() * out if self.config.prediction_type == "v_prediction" \
                    else (model_in - (1 - a).sqrt() * out) / a.sqrt()
                x_vp = x / (sched.sigmas[sched.step_index] ** 2 + 1).sqrt() if sigma_space else x
                callback(i, len(timesteps), x_vp, x0)
        return ((x.clamp(-1, 1) + 1) / 2).cpu()


def _with_class_embedding(unet: Any, sample: torch.Tensor, t: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """Run the UNet with a given class embedding (B, D) instead of looking one up."""
    original = unet.class_embedding
    unet.class_embedding = _Constant(class_emb)
    try:
        return unet(sample, t, class_labels=torch.zeros(len(class_emb), dtype=torch.long, device=sample.device)).sample
    finally:
        unet.class_embedding = original


class _Constant(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, _labels: torch.Tensor) -> torch.Tensor:
        return self.value


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023) for an epsilon or v loss: converges faster than uniform."""
    alpha = alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)
