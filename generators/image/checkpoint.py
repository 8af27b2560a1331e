"""Saving and loading image models.

Inference export (what gets committed and what plugins load): ``model.safetensors`` holds the
weights and ``config.json`` the model type, its config dataclass fields, the class names and
how it was trained, so :func:`load_model` rebuilds the model from the JSON alone.

Resumable training state (models, optimizers, EMA, epoch, RNG states) is a separate
``checkpoint.pt`` written atomically by :func:`save_training_state`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .classifier import Classifier, ClassifierConfig
from .diffusion import DiffusionConfig, DigitDiffusion
from .gan import GANConfig, Generator
from .vae import VAE, VAEConfig

FORMAT = "aigc-studio-image-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_STATE_FILE = "checkpoint.pt"

# model type -> (module class, config dataclass); the GAN export is the (EMA) generator only
MODEL_TYPES: dict[str, tuple[type[nn.Module], type]] = {
    "gan": (Generator, GANConfig),
    "vae": (VAE, VAEConfig),
    "classifier": (Classifier, ClassifierConfig),
    "diffusion": (DigitDiffusion, DiffusionConfig),
}


@dataclass
class LoadedModel:
    model: nn.Module
    model_type: str
    class_names: list[str]
    conditional: bool
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config


def build_model(model_type: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of ``model_type`` from its config fields."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
    module_cls, config_cls = MODEL_TYPES[model_type]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"{model_type} config has unknown fields {sorted(unknown)}")
    return module_cls(config_cls(**config))


def save_model(out_dir: str | os.PathLike, model: nn.Module, model_type: str, class_names: list[str],
               conditional: bool = True, training: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir``; returns the folder."""
    module_cls, _ = MODEL_TYPES[model_type]
    if not isinstance(model, module_cls):
        raise TypeError(f"a {model_type} export must be a {module_cls.__name__}, got {type(model).__name__}")
    if len(class_names) != model.config.num_classes:
        raise ValueError(f"{len(class_names)} class names for {model.config.num_classes} classes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": FORMAT, "model_type": model_type})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_type": model_type,
        "config": dataclasses.asdict(model.config),
        "class_names": list(class_names),
        "conditional": conditional,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "training": training or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a model from ``config.json`` and load ``model.safetensors``; returned in eval mode."""
    folder = Path(directory)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; expected an exported image model folder")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not an {FORMAT} config (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{config_path} has format_version {meta['format_version']}; this code reads {FORMAT_VERSION}")
    model = build_model(meta["model_type"], meta["config"])
    model.load_state_dict(load_file(weights_path), strict=True)
    model.to(device).eval()
    return LoadedModel(model, meta["model_type"], meta["class_names"], meta.get("conditional", True),
                       meta.get("training", {}))


def resolve_device(name: str) -> torch.device:
    """--device auto|cpu|cuda of the training commands, with a clear error when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The torch RNG states a resumed run must restore to continue exactly."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename, so an interrupted save never corrupts."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(path), map_location="cpu", weights_only=True)
