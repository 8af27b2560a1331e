"""The GAN and VAE generator plugins (entry points ``gan`` and ``vae``).

Both load an exported model folder (``config.json`` + ``model.safetensors``, see
``checkpoint.py``): a path, or ``builtin:NAME`` for the weights shipped in
``generators/image/weights``. Every image is drawn from its own seed, so an image of a batch
can be made again on its own, byte for byte on CPU.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..base import (
    CAP_CLASS_CONDITIONAL,
    CAP_INTERPOLATE,
    CAP_RECONSTRUCT,
    CAP_SEED,
    GeneratorInfo,
    ImageEnd,
    ImageGenerator,
    ImageOutput,
    InvalidOptionsError,
    LoadFailedError,
    ProgressFn,
    StepControl,
    StrictModel,
)
from ..compute import on_lane

BUILTIN_PREFIX = "builtin:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MAX_SEED = 2**32 - 1


def resolve_weights(source: str) -> Path:
    """``builtin:NAME`` -> the shipped folder; anything else is a folder path."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        folder = WEIGHTS_DIR / name
        if not name or "/" in name or not folder.is_dir():
            shipped = ", ".join(sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir()))
            raise LoadFailedError(f"No built-in image weights named {name!r} (shipped: {shipped}).")
        return folder
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise LoadFailedError(f"{folder} is not an exported image model folder (config.json is missing).")
    return folder


class ImageLoadOptions(StrictModel):
    weights: str = Field(..., description="exported model folder, or builtin:NAME")
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    classifier: str | None = Field(None, description="classifier folder used to guess the class of an uploaded image")


class GANParams(StrictModel):
    truncation: float | None = Field(
        None, gt=0.0, le=4.0, description="redraw latent entries beyond ±t: smaller = cleaner, less varied; empty = off")


class VAEParams(StrictModel):
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="scale of the prior noise: 0 = the average digit")


def slerp(a: Any, b: Any, t: Any) -> Any:
    """Spherical interpolation of latent rows a, b (1, D) at fractions t (N, 1): stays on the Gaussian shell."""
    import torch

    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((na * nb).sum(1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if float(so) < 1e-6:  # (anti)parallel: plain lerp
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


class _TorchImagePlugin(ImageGenerator):
    """Shared loading, device choice, seeds and uint8 conversion of the GAN and VAE plugins."""

    model_type: str

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self._folder = resolve_weights(self.options.weights)
        meta = json.loads((self._folder / "config.json").read_text())
        if meta.get("model_type") != self.model_type:
            raise LoadFailedError(f"{self._folder} holds a {meta.get('model_type')!r} model, not a {self.model_type}.")
        self._meta = meta
        self._model: Any = None
        self._classifier: Any = None
        self._device = "cpu"
        self._weights_hash: str | None = None

    # -- what is known before loading
    @property
    def class_names(self) -> list[str]:
        return list(self._meta["class_names"])

    @property
    def image_size(self) -> tuple[int, int, int]:
        config = self._meta["config"]
        return config["size"], config["size"], config["channels"]

    @property
    def training(self) -> dict[str, Any]:
        return dict(self._meta.get("training", {}))

    @property
    def weights_hash(self) -> str:
        """sha256 of the weights file (first 16 hex digits): identifies the exact weights in PNG metadata."""
        if self._weights_hash is None:
            digest = hashlib.sha256((self._folder / "model.safetensors").read_bytes()).hexdigest()
            self._weights_hash = digest[:16]
        return self._weights_hash

    def estimated_memory_bytes(self) -> int:
        return 4 * int(self._meta.get("num_parameters", 0))

    def memory_bytes(self) -> int:
        if self._model is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self._model.parameters())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "classes": self.class_names, "image_size": list(self.image_size),
                "weights": str(self._folder)}

    # -- lifecycle
    def _load(self, progress: ProgressFn) -> None:
        import torch

        from .checkpoint import load_model

        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise LoadFailedError(f"{self.name}: device 'cuda' was asked for but no CUDA GPU is available; use cpu or auto.")
        progress(f"Loading {self.name} from {self._folder.name}…")
        self._model = load_model(self._folder, device).model
        self._device = device
        if self.options.classifier:
            self._classifier = load_model(resolve_weights(self.options.classifier), device).model
        self.weights_hash  # noqa: B018 - hash once at load, not on the first request

    def _unload(self) -> None:
        self._model = None
        self._classifier = None

    # -- helpers
    def _check_label(self, label: int) -> None:
        if not 0 <= label < len(self.class_names):
            raise InvalidOptionsError(f"Class {label} does not exist; {self.name} has classes 0–{len(self.class_names) - 1}.")

    def _latent(self, seed: int, params: BaseModel) -> Any:
        raise NotImplementedError

    def _decode(self, z: Any, y: Any, params: BaseModel) -> Any:
        """Latents (N, D) and class ids (N,) or class weights (N, K) -> images in [0, 1], (N, C, H, W)."""
        raise NotImplementedError

    @staticmethod
    def _to_uint8(images: Any) -> Any:
        import torch

        return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def _latents(self, ends: Sequence[ImageEnd], params: BaseModel) -> Any:
        import torch

        for end in ends:
            self._check_label(end.label)
            if not 0 <= end.seed <= MAX_SEED:
                raise InvalidOptionsError(f"Seed {end.seed} is out of range 0–{MAX_SEED}.")
        return torch.cat([self._latent(end.seed, params) for end in ends])

    def _require_loaded(self) -> None:
        if self._model is None:
            raise LoadFailedError(f"{self.name} is not loaded.")

    # -- the contract's inner calls (`ImageGenerator` runs them on the compute lane, loaded, and times them)
    def _sample(self, ends: Sequence[ImageEnd], params: BaseModel, control: StepControl) -> ImageOutput:
        import torch

        if not ends:
            raise InvalidOptionsError("Ask for at least one image.")
        z = self._latents(ends, params)
        y = torch.tensor([end.label for end in ends])
        with torch.inference_mode():
            images = self._decode(z.to(self._device), y.to(self._device), params)
        return ImageOutput(self._to_uint8(images), self.weights_hash)

    def _interpolate(self, start: ImageEnd, end: ImageEnd, frames: int, params: BaseModel) -> ImageOutput:
        """`frames` images walking from `start` to `end`: latents by slerp, classes by mixing their embeddings."""
        import torch

        if frames < 2:
            raise InvalidOptionsError("An interpolation needs at least 2 frames.")
        z = self._latents([start, end], params)
        t = torch.linspace(0, 1, frames).unsqueeze(1)  # (N, 1)
        path = slerp(z[:1], z[1:], t)
        k = len(self.class_names)
        weights = (1 - t) * torch.nn.functional.one_hot(torch.tensor(start.label), k) \
            + t * torch.nn.functional.one_hot(torch.tensor(end.label), k)
        with torch.inference_mode():
            images = self._decode(path.to(self._device), weights.float().to(self._device), params)
        return ImageOutput(self._to_uint8(images), self.weights_hash)


class GANPlugin(_TorchImagePlugin):
    info = GeneratorInfo(
        plugin="gan",
        modality="image",
        family="gan",
        description="Class-conditional DCGAN-style generator (spectral norm, hinge loss, projection D, EMA weights)",
        capabilities=frozenset({CAP_CLASS_CONDITIONAL, CAP_SEED, CAP_INTERPOLATE}),
        params=GANParams,
        load_options=ImageLoadOptions,
    )
    model_type = "gan"

    def _latent(self, seed: int, params: GANParams) -> Any:
        import torch

        from .gan import sample_latent

        return sample_latent(1, self._meta["config"]["z_dim"], params.truncation, torch.Generator().manual_seed(seed))

    def _decode(self, z: Any, y: Any, params: GANParams) -> Any:
        return (self._model(z, y) + 1) / 2


class VAEPlugin(_TorchImagePlugin):
    info = GeneratorInfo(
        plugin="vae",
        modality="image",
        family="vae",
        description="Class-conditional convolutional VAE (Bernoulli likelihood): samples, reconstructs, "
                    "re-renders an image as other classes",
        capabilities=frozenset({CAP_CLASS_CONDITIONAL, CAP_SEED, CAP_INTERPOLATE, CAP_RECONSTRUCT}),
        params=VAEParams,
        load_options=ImageLoadOptions,
    )
    model_type = "vae"

    def _latent(self, seed: int, params: VAEParams) -> Any:
        import torch

        z = torch.randn(1, self._meta["config"]["z_dim"], generator=torch.Generator().manual_seed(seed))
        return params.temperature * z

    def _decode(self, z: Any, y: Any, params: VAEParams) -> Any:
        return self._model.decode(z, y)

    @on_lane
    def guess_label(self, pixels: Any) -> int | None:
        """The classifier's guess for an image (H, W, C uint8 at `image_size`), or None without a classifier."""
        import torch

        self._require_loaded()
        if self._classifier is None:
            return None
        x = self._to_tensor(pixels)
        with torch.inference_mode():
            return int(self._classifier(x).argmax(1).item())

    def _to_tensor(self, pixels: Any) -> Any:
        import numpy as np
        import torch

        h, w, c = self.image_size
        array = np.asarray(pixels)
        if array.ndim == 2:
            array = array[..., None]
        if array.shape != (h, w, c) or array.dtype != np.uint8:
            raise InvalidOptionsError(f"Expected a {w}×{h} image with {c} channel(s), got shape {array.shape}.")
        return torch.from_numpy(array.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).to(self._device)

    def _reconstruct(self, pixels: Any, label: int, targets: Sequence[int]) -> ImageOutput:
        """Encode as class `label` (posterior mean), decode as each of `targets` — the same handwriting, other classes."""
        import torch

        self._check_label(label)
        for target in targets:
            self._check_label(target)
        x = self._to_tensor(pixels)
        with torch.inference_mode():
            mu, _ = self._model.encode(x, torch.tensor([label], device=self._device))
            z = mu.expand(len(targets), -1)
            images = self._model.decode(z, torch.tensor(list(targets), device=self._device))
        return ImageOutput(self._to_uint8(images), self.weights_hash)
