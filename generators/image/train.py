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
import dataclasses
import logging
import os
import shlex
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import (
    TRAINING_STATE_FILE,
    load_training_state,
    resolve_device,
    rng_state,
    save_model,
    save_training_state,
    set_rng_state,
)
from .data import MNIST5K, ImageDataset, load_dataset
from .plots import draw_curves
from .trainers import TRAINERS, Trainer

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
    callback: Callable[[dict[str, Any]], None] | None = None  # step and epoch events (the job runner's curves)


@dataclass
class TrainResult:
    out: Path
    epochs: int
    train_seconds: float
    last: dict[str, float]


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
        set_rng_state(state["rng"], device)
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
                if options.callback:
                    options.callback({"type": "step", "epoch": epoch + 1, "step": epoch * steps + i + 1,
                                      "total": options.epochs * steps, **metrics})
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)
            row = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, **trainer.end_epoch()}
            train_seconds += time.time() - started
            row["train_seconds"] = round(train_seconds, 1)
            history.append(row)
            log.info("epoch %d/%d %s", epoch + 1, options.epochs,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            trainer.save_samples(out / f"samples_epoch{epoch + 1:03d}.png")
            draw_curves(history, trainer.curve_keys, out / "curves.png")
            if options.callback:
                options.callback({"type": "epoch", **row, "samples": os.fspath(out / f"samples_epoch{epoch + 1:03d}.png")})
            save_training_state(checkpoint_path, {
                "model_type": options.model, "data": data.source, "size": options.size, "seed": seed,
                "model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(train_config),
                "epoch": epoch + 1, "history": history, "train_seconds": train_seconds,
                "trainer": trainer.state_dict(), "rng": rng_state(device)})

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
