"""Train an image model: ``python -m generators.image.train gan|vae|classifier``.

    python -m generators.image.train gan --data mnist5k --size 32 --epochs 100 --out /tmp/train-gan

Each epoch writes a resumable ``checkpoint.pt`` (models, optimizers, EMA, epoch, RNG states),
``curves.png`` (per-epoch loss curves) and ``samples_epochNNN.png`` (fixed noise, one row per
class) into ``--out``; ``--resume`` continues from the checkpoint. At the end the inference
weights are exported as ``model.safetensors`` + ``config.json`` in the same folder.
On CPU a given seed gives the same weights, with or without an interruption and resume.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import TRAINING_STATE_FILE, load_training_state, save_model, save_training_state
from .classifier import Classifier, ClassifierConfig
from .data import MNIST5K, ImageDataset, load_dataset
from .gan import EMA, Discriminator, GANConfig, Generator, discriminator_hinge_loss, generator_hinge_loss
from .plots import draw_curves, save_grid
from .vae import VAE, VAEConfig

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """The command line as a value."""

    model: str                      # gan | vae | classifier
    data: str = MNIST5K             # mnist5k or a folder of images
    size: int = 32
    epochs: int = 20
    out: Path = Path("runs/image")
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda
    resume: bool = False
    threads: int | None = None      # torch.set_num_threads
    overrides: dict[str, str] = field(default_factory=dict)  # --set key=value (model or training config)
    progress: bool = True


@dataclass
class TrainResult:
    out: Path
    epochs: int
    train_seconds: float
    last: dict[str, float]


# ---------------------------------------------------------------------------- trainers

@dataclass
class GANTrainConfig:
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_max_decay: float = 0.999
    bn_calibration_batches: int = 50  # standing BatchNorm statistics of the exported EMA generator


@dataclass
class VAETrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    kl_warmup_steps: int = 0        # linear 0 -> 1 weight on the KL term (0: none)
    max_shift: int = 0              # random translation augmentation, pixels (0: none)
    ema_max_decay: float = 0.999    # the exported VAE is an EMA of the weights (0: no EMA)


@dataclass
class ClassifierTrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_shift: int = 2              # random translation augmentation, pixels


class Trainer(Protocol):
    model_type: str
    value_range: tuple[float, float]  # what the model eats: images are mapped from [0, 1]
    curve_keys: list[str]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]: ...
    def end_epoch(self) -> dict[str, float]: ...
    def save_samples(self, path: Path) -> None: ...
    def export_model(self) -> nn.Module: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _grid_labels(num_classes: int, per_row: int = 10, max_rows: int = 16) -> torch.Tensor:
    """Rows = classes (or 8 rows of the single class of an unconditional model)."""
    rows = 8 if num_classes == 1 else min(num_classes, max_rows)
    return (torch.arange(rows) % num_classes).repeat_interleave(per_row)


class GANTrainer:
    model_type = "gan"
    value_range = (-1.0, 1.0)
    curve_keys = ["d_loss", "g_loss", "d_real", "d_fake"]

    def __init__(self, config: GANConfig, train: GANTrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device, self.seed = config, train, device, seed
        self.G = Generator(config)
        self.G.init_output_bias(data.to_range(-1, 1).mean(dim=(0, 2, 3)))  # (channels,)
        self.G.to(device)
        self.D = Discriminator(config).to(device)
        self.ema = EMA(self.G, train.ema_max_decay)
        betas = (train.beta1, train.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=train.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=train.lr_d, betas=betas)
        noise = torch.Generator().manual_seed(seed + 1)  # fixed grid noise, off the global RNG
        self.grid_labels = _grid_labels(config.num_classes)
        self.grid_z = torch.randn(len(self.grid_labels), config.z_dim, generator=noise)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        b = x.shape[0]
        # discriminator: real images vs fakes of the same classes, one batch through D
        with torch.no_grad():
            fake = self.G(torch.randn(b, self.config.z_dim, device=self.device), y)
        logits = self.D(torch.cat([x, fake]), torch.cat([y, y]))  # (2B,)
        d_loss = discriminator_hinge_loss(logits[:b], logits[b:])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # generator: fool D (D's weights frozen for this pass)
        self.D.requires_grad_(False)
        fake = self.G(torch.randn(b, self.config.z_dim, device=self.device), y)
        g_loss = generator_hinge_loss(self.D(fake, y))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.ema.update(self.G)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                "d_real": logits[:b].mean().item(), "d_fake": logits[b:].mean().item()}

    def end_epoch(self) -> dict[str, float]:
        return {}

    def _calibrated_ema(self, batches: int) -> Generator:
        model = copy.deepcopy(self.ema.model)
        model.recalibrate_batchnorm(batches, generator=torch.Generator().manual_seed(self.seed + 2))
        return model.eval()

    def save_samples(self, path: Path) -> None:
        model = self._calibrated_ema(10)
        with torch.no_grad():
            images = (model(self.grid_z.to(self.device), self.grid_labels.to(self.device)) + 1) / 2
        save_grid(images, 10, path)

    def export_model(self) -> nn.Module:
        return self._calibrated_ema(self.train_config.bn_calibration_batches).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "ema": self.ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


class VAETrainer:
    model_type = "vae"
    value_range = (0.0, 1.0)
    curve_keys = ["neg_elbo", "reconstruction", "kl", "eval_neg_elbo"]

    def __init__(self, config: VAEConfig, train: VAETrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device, self.seed = config, train, device, seed
        self.vae = VAE(config).to(device)
        self.ema = EMA(self.vae, train.ema_max_decay)
        self.opt = torch.optim.AdamW(self.vae.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.eval_data = eval_data
        self.step = 0
        self.grid_labels = _grid_labels(config.num_classes)
        self.grid_z = torch.randn(len(self.grid_labels), config.z_dim, generator=torch.Generator().manual_seed(seed + 1))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.vae.train()
        terms = self.vae.elbo(random_shift(x, self.train_config.max_shift), y)
        warmup = self.train_config.kl_warmup_steps
        beta = min(1.0, (self.step + 1) / warmup) if warmup > 0 else 1.0
        loss = (terms.reconstruction + beta * terms.kl).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.update(self.vae)
        self.step += 1
        return {"neg_elbo": terms.loss.mean().item(), "reconstruction": terms.reconstruction.mean().item(),
                "kl": terms.kl.mean().item()}

    @torch.no_grad()
    def end_epoch(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        noise = torch.Generator().manual_seed(self.seed + 3)
        total = 0.0
        for x, y in zip(self.eval_data.images.split(500), self.eval_data.labels.split(500), strict=True):
            total += self.ema.model.elbo(x.to(self.device), y.to(self.device), generator=noise).loss.sum().item()
        return {"eval_neg_elbo": total / len(self.eval_data)}

    @torch.no_grad()
    def save_samples(self, path: Path) -> None:
        images = self.ema.model.decode(self.grid_z.to(self.device), self.grid_labels.to(self.device))
        save_grid(images, 10, path)

    def export_model(self) -> nn.Module:
        return copy.deepcopy(self.ema.model).cpu().eval()

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.step = int(state["step"])


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill), using the global RNG."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2))
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


class ClassifierTrainer:
    model_type = "classifier"
    value_range = (0.0, 1.0)
    curve_keys = ["loss", "accuracy", "eval_accuracy"]

    def __init__(self, config: ClassifierConfig, train: ClassifierTrainConfig, device: torch.device, seed: int,
                 data: ImageDataset, eval_data: ImageDataset | None = None) -> None:
        self.config, self.train_config, self.device = config, train, device
        self.model = Classifier(config).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.eval_data = eval_data

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.model.train()
        logits = self.model(random_shift(x, self.train_config.max_shift))
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}

    def end_epoch(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        predicted = self.model.predict(self.eval_data.images)
        return {"eval_accuracy": (predicted == self.eval_data.labels).float().mean().item()}

    def save_samples(self, path: Path) -> None:
        return None  # nothing to draw for a classifier

    def export_model(self) -> nn.Module:
        return copy.deepcopy(self.model).cpu().eval()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])


# model type -> (trainer, model config, training config)
TRAINERS: dict[str, tuple[type, type, type]] = {
    "gan": (GANTrainer, GANConfig, GANTrainConfig),
    "vae": (VAETrainer, VAEConfig, VAETrainConfig),
    "classifier": (ClassifierTrainer, ClassifierConfig, ClassifierTrainConfig),
}


# ---------------------------------------------------------------------------- configuration

def _parse_value(text: str, type_name: str) -> Any:
    if type_name == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    parsers = {"int": int, "float": float, "str": str}
    if type_name not in parsers:
        raise ValueError(f"cannot set a field of type {type_name} from the command line")
    return parsers[type_name](text)


def build_configs(model_type: str, data: ImageDataset, overrides: dict[str, str]) -> tuple[Any, Any]:
    """The model config (shape from the data) and training config, with ``--set`` overrides applied."""
    _, model_cls, train_cls = TRAINERS[model_type]
    model_fields = {f.name: f for f in dataclasses.fields(model_cls)}
    train_fields = {f.name: f for f in dataclasses.fields(train_cls)}
    model_kwargs: dict[str, Any] = {"size": data.size, "channels": data.channels, "num_classes": data.num_classes}
    train_kwargs: dict[str, Any] = {}
    for key, text in overrides.items():
        if key in ("size", "channels", "num_classes"):
            raise ValueError(f"{key} comes from the data; use --size or a different dataset")
        if key in model_fields:
            model_kwargs[key] = _parse_value(text, str(model_fields[key].type))
        elif key in train_fields:
            train_kwargs[key] = _parse_value(text, str(train_fields[key].type))
        else:
            raise ValueError(f"unknown --set key {key!r} for {model_type}; "
                             f"valid: {', '.join(sorted({*model_fields, *train_fields} - {'size', 'channels', 'num_classes'}))}")
    return model_cls(**model_kwargs), train_cls(**train_kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- the loop

def train(options: TrainOptions) -> TrainResult:
    """Train (or resume) one model and export its inference weights into ``options.out``."""
    if options.model not in TRAINERS:
        raise ValueError(f"model must be one of {sorted(TRAINERS)}, got {options.model!r}")
    if options.epochs < 1 or options.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1")
    if options.threads:
        torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_dataset(options.data, options.size, "train")
    eval_data = load_dataset(MNIST5K, options.size, "eval") if options.data == MNIST5K else None
    if options.model == "classifier" and data.num_classes < 2:
        raise ValueError("a classifier needs at least two classes (one sub-folder per class)")

    checkpoint_path = out / TRAINING_STATE_FILE
    state = load_training_state(checkpoint_path) if options.resume and checkpoint_path.is_file() else None
    if options.resume and state is None:
        log.info("no checkpoint at %s; starting from scratch", checkpoint_path)
    trainer_cls, model_cls, train_cls = TRAINERS[options.model]
    if state is not None:
        if state["model_type"] != options.model or state["data"] != data.source or state["size"] != options.size:
            raise ValueError(f"{checkpoint_path} is a {state['model_type']} run on {state['data']} at "
                             f"{state['size']} px; it cannot resume a {options.model} run on {data.source} at {options.size} px")
        if options.overrides:
            log.warning("--set is ignored on resume; the checkpoint's configs are used")
        model_config, train_config = model_cls(**state["model_config"]), train_cls(**state["train_config"])
        seed = int(state["seed"])
    else:
        model_config, train_config = build_configs(options.model, data, options.overrides)
        seed = options.seed
    torch.manual_seed(seed)
    trainer: Trainer = trainer_cls(model_config, train_config, device, seed, data, eval_data)
    start_epoch, history, train_seconds = 0, [], 0.0
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        _set_rng_state(state["rng"], device)
        start_epoch, history, train_seconds = int(state["epoch"]), list(state["history"]), float(state["train_seconds"])
        log.info("resumed %s from epoch %d (%s)", options.model, start_epoch, checkpoint_path)

    images = data.to_range(*trainer.value_range)
    batch = min(options.batch_size, len(data))
    steps = len(data) // batch  # the last partial batch is dropped (a different one each epoch)
    log.info("%s on %s: %d images, %d classes, %d px, batch %d, %d steps/epoch, device %s, %d thread(s)",
             options.model, data.source, len(data), data.num_classes, data.size, batch, steps, device,
             torch.get_num_threads())
    with logging_redirect_tqdm():
        for epoch in range(start_epoch, options.epochs):
            started = time.time()
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            sums: dict[str, float] = defaultdict(float)
            bar = tqdm(range(steps), desc=f"{options.model} {epoch + 1}/{options.epochs}", leave=False,
                       disable=not options.progress, mininterval=1.0, file=sys.stderr)
            for i in bar:
                idx = order[i * batch:(i + 1) * batch]
                metrics = trainer.train_step(images[idx].to(device), data.labels[idx].to(device))
                for key, value in metrics.items():
                    sums[key] += value
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
            row = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, **trainer.end_epoch()}
            train_seconds += time.time() - started
            row["train_seconds"] = round(train_seconds, 1)
            history.append(row)
            log.info("epoch %d/%d %s", epoch + 1, options.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            trainer.save_samples(out / f"samples_epoch{epoch + 1:03d}.png")
            draw_curves(history, trainer.curve_keys, out / "curves.png")
            save_training_state(checkpoint_path, {
                "model_type": options.model, "data": data.source, "size": options.size, "seed": seed,
                "model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(train_config),
                "epoch": epoch + 1, "history": history, "train_seconds": train_seconds,
                "trainer": trainer.state_dict(), "rng": _rng_state(device)})

    training_info = {
        "command": "python -m generators.image.train " + " ".join(shlex.quote(a) for a in options_to_argv(options)),
        "data": data.source, "num_images": len(data), "size": options.size, "epochs": options.epochs,
        "batch_size": batch, "seed": seed, "device": str(device), "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "train_seconds": round(train_seconds, 1),
        "train_config": dataclasses.asdict(train_config), "last_epoch": history[-1] if history else {},
    }
    save_model(out, trainer.export_model(), options.model, data.class_names, data.conditional, training_info)
    log.info("exported %s to %s", options.model, out)
    return TrainResult(out, options.epochs, train_seconds, history[-1] if history else {})


# ---------------------------------------------------------------------------- command line

def options_to_argv(options: TrainOptions) -> list[str]:
    argv = [options.model, "--data", options.data, "--size", str(options.size), "--epochs", str(options.epochs),
            "--out", os.fspath(options.out), "--batch-size", str(options.batch_size), "--seed", str(options.seed)]
    if options.threads:
        argv += ["--threads", str(options.threads)]
    for key, value in options.overrides.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    parser = argparse.ArgumentParser(prog="python -m generators.image.train", description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=sorted(TRAINERS))
    parser.add_argument("--data", default=MNIST5K, help="'mnist5k' or a folder of images (sub-folder per class)")
    parser.add_argument("--size", type=int, choices=(32, 64), default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, PNGs, exported model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model or training config field, e.g. --set z_dim=64 --set lr=5e-4")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    return TrainOptions(args.model, args.data, args.size, args.epochs, args.out, args.batch_size, args.seed,
                        args.device, args.resume, args.threads, overrides, not args.no_progress)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(argv)
    try:
        result = train(options)
    except (ValueError, FileNotFoundError) as error:
        log.error("%s", error)
        raise SystemExit(2) from error
    metrics = " ".join(f"{k}={v:.4g}" for k, v in result.last.items() if k != "epoch")
    print(f"trained {options.model} for {result.epochs} epochs in {result.train_seconds / 60:.1f} min "
          f"-> {result.out} ({metrics})")


if __name__ == "__main__":
    main()
