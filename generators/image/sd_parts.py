"""The pieces of the diffusers plugin that are tables and small pure functions: scheduler names
(A1111's sampler names → diffusers classes), the single-file family check, the cheap latent → RGB
preview and the memory estimate of one request. torch and diffusers are imported inside functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A1111's sampler names (what its API, infotext and Civitai use) → diffusers scheduler class and the
# config overrides that make it that sampler. LCM is only offered for LCM / Turbo models.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
    "LCM": ("LCMScheduler", {}),
}
DISTILLED_ONLY = frozenset({"LCM"})

# Families a single .safetensors file may hold (diffusers' model type → ours and the pipeline class).
SINGLE_FILE_FAMILIES: dict[str, tuple[str, str]] = {
    "v1": ("sd1", "StableDiffusionPipeline"),
    "inpainting": ("sd1", "StableDiffusionPipeline"),
    "xl_base": ("sdxl", "StableDiffusionXLPipeline"),
    "xl_inpaint": ("sdxl", "StableDiffusionXLPipeline"),
}
FAMILY_DEFAULT_SIDE = {"sd1": 512, "sdxl": 1024}

# Approximate latent → RGB (a 4 × 3 linear map of the SD VAE's latent space, as the web UIs' cheap
# live previews do), per family. Good enough to watch a picture form; the real VAE decodes the end.
LATENT_RGB = {
    "sd1": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
            [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011]),
}


def scheduler_names(distilled: bool) -> list[str]:
    """The sampler names a model offers, its default first (LCM for a distilled model)."""
    names = [n for n in SCHEDULERS if n not in DISTILLED_ONLY]
    return ["LCM", *names] if distilled else names


def make_scheduler(name: str, base_config: Any) -> Any:
    """A scheduler of `name` built from the pipeline's own scheduler config (its betas, timestep spacing)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]


def single_file_family(path: Path) -> tuple[str, str]:
    """(family, diffusers model type) of a single-file checkpoint, read from its tensor names and shapes only.

    Raises ValueError with what was found when it is not SD 1.x or SDXL."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = {k: _Shape(tuple(f.get_slice(k).get_shape())) for k in f.keys()}  # header only, no tensor data
    model_type = infer_diffusers_model_type(shapes)
    sd1_marks = (CHECKPOINT_KEY_NAMES["v1"], CHECKPOINT_KEY_NAMES["clip"], CHECKPOINT_KEY_NAMES["inpainting"])
    if model_type in ("v1", "inpainting") and not any(k in shapes for k in sd1_marks):
        model_type = "unknown"  # diffusers falls back to "v1" for anything it does not recognise
    if model_type not in SINGLE_FILE_FAMILIES:
        sample = ", ".join(list(shapes)[:3]) or "no tensors"
        raise ValueError(f"{path.name} is not a Stable Diffusion 1.x or SDXL checkpoint (diffusers reads it as "
                         f"{model_type!r}; first tensors: {sample}).")
    return SINGLE_FILE_FAMILIES[model_type][0], model_type


def latent_preview(latents: Any, family: str) -> Any:
    """(N, C, h, w) latents → (N, h, w, 3) uint8, by the family's linear map (or the first 3 channels)."""
    import torch

    x = latents.detach().float().cpu()
    if family in LATENT_RGB and x.shape[1] == 4:
        weight, bias = (torch.tensor(v) for v in LATENT_RGB[family])
        rgb = torch.einsum("nchw,cr->nhwr", x, weight) + bias
        rgb = (rgb + 1) / 2
    else:
        rgb = x[:, :3].permute(0, 2, 3, 1)
        low, high = rgb.amin(), rgb.amax()
        rgb = (rgb - low) / (high - low + 1e-6)
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def request_bytes(width: int, height: int, count: int, guidance: float, dtype_bytes: int, vae_scale: int,
                  tiled: bool = False) -> int:
    """Rough peak activation memory of one request, beside the weights: the UNet's feature maps at
    full latent size (≈ 320 channels × a few dozen live tensors) for every image and guidance branch
    (attention runs through fused SDPA kernels, so no attention map is stored), plus one VAE decode
    (slicing decodes one image at a time; tiling bounds it to 512 px tiles) in float32."""
    tokens = (width // vae_scale) * (height // vae_scale)
    branches = 2 if guidance > 1 else 1
    unet = count * branches * tokens * 320 * 24 * dtype_bytes
    pixels = min(width, 512) * min(height, 512) if tiled else width * height
    vae_decode = pixels * 256 * 4 * 4
    return unet + vae_decode


def folder_bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())
