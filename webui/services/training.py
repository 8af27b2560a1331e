"""Train and fine-tune: a dataset + a family + parameters → a queued job → (when done) the owner's model.

Families: `lora` (a LoRA adapter on a shared language model, on a text or chats), `lstm` (the char-LSTM
on a text), `gan`, `vae`, `diffusion` (on an image archive, or the MNIST digits that ship with the
studio). A finished job's model joins the registry as `OWNER/NAME`, visible to its owner only, with a
model card written from the job; deleting the job unregisters the model and removes its files.

The PNGs a job writes for a person to see (the per-epoch sample grids, the loss curves) are signed with
the studio's C2PA identity by the job runner's `on_images` hook (`sign_job_images`), before the page is
told of them: the training code in `generators/` writes plain PNGs and knows nothing of signing.
"""

from __future__ import annotations

import logging
import math
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from generators.base import InvalidOptionsError, StrictModel, describe_validation_error
from generators.registry import ModelSpec
from storage.files import write_private
from storage.models import Job

from . import provenance
from .context import AppContext
from .datasets import dataset_folder, get_dataset
from .jobs import check_name

log = logging.getLogger(__name__)

DIGITS = "mnist5k"  # the built-in image dataset (5,000 MNIST digits): evaluation figures are measured on it


class LoraParams(StrictModel):
    base: str = Field("", description="the shared language model to adapt (default: the default chat model)")
    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0, le=0.1, description="learning rate")
    epochs: int = Field(2, ge=1, le=100)
    max_length: int = Field(256, ge=16, le=4096, description="tokens per training example")
    batch_size: int = Field(4, ge=1, le=64)
    max_steps: int | None = Field(None, ge=1, le=100_000, description="stop after this many steps (all epochs)")
    quantization: str = Field("none", pattern="^(none|4bit)$", description="4bit: QLoRA (CUDA only)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ImageParams(StrictModel):
    epochs: int = Field(5, ge=1, le=500)
    batch_size: int = Field(64, ge=2, le=1024)
    size: Literal[32, 64] = Field(32, description="image side in px")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class LstmParams(StrictModel):
    epochs: int = Field(5, ge=1, le=500)
    hidden: int = Field(256, ge=16, le=2048)
    layers: int = Field(2, ge=1, le=4)
    seq_len: int = Field(128, ge=8, le=1024)
    batch_size: int = Field(32, ge=1, le=512)
    lr: float = Field(2e-3, gt=0, le=0.1)
    max_steps: int | None = Field(None, ge=1, le=100_000, description="steps per epoch at most")
    seed: int = Field(0, ge=0, le=2**31 - 1)


FAMILIES: dict[str, tuple[type[StrictModel], tuple[str, ...]]] = {
    "lora": (LoraParams, ("text", "chat")),
    "lstm": (LstmParams, ("text",)),
    "gan": (ImageParams, ("images", DIGITS)),
    "vae": (ImageParams, ("images", DIGITS)),
    "diffusion": (ImageParams, ("images", DIGITS)),
}
FAMILY_LABELS = {"lora": "Language model: LoRA fine-tune", "lstm": "Character LSTM", "gan": "GAN", "vae": "VAE",
                 "diffusion": "Diffusion (digits-size UNet)"}


def registry_name(owner: str, name: str) -> str:
    return f"{owner}/{name}"


def start_training(ctx: AppContext, owner: str, kind: str, dataset_id: str, name: str,
                   params: dict[str, Any] | None = None) -> Job:
    """Validate everything, then queue the job (nothing is queued when anything is wrong)."""
    if kind not in FAMILIES:
        raise InvalidOptionsError(f"Unknown family {kind!r}; pick one of {', '.join(FAMILIES)}.")
    model_cls, accepts = FAMILIES[kind]
    try:
        values = model_cls(**(params or {}))
    except ValidationError as exc:
        raise InvalidOptionsError(describe_validation_error(exc, "parameter")) from None
    except ValueError as exc:
        raise InvalidOptionsError(str(exc)) from None
    name = check_name(name)
    full_name = registry_name(owner, name)
    if full_name in ctx.registry.names(owner=owner) or any(
            j.name == name and j.state in ("queued", "running", "done") for j in ctx.jobs.list(owner, limit=1000)):
        raise InvalidOptionsError(f"You already have a model or job named {name!r}; pick another name.")
    if dataset_id == DIGITS:
        if DIGITS not in accepts:
            raise InvalidOptionsError(f"The digits dataset is for image families; {FAMILY_LABELS[kind]} needs a text.")
        data, data_kind, dataset_name, stored_id = DIGITS, "images", "MNIST digits (built in)", None
    else:
        dataset = get_dataset(ctx, owner, dataset_id)
        if dataset.kind not in accepts:
            needs = " or ".join(a for a in accepts if a != DIGITS)
            raise InvalidOptionsError(f"{FAMILY_LABELS[kind]} trains on {needs}; {dataset.name!r} holds {dataset.kind}.")
        folder = dataset_folder(ctx, dataset)
        data = str(folder / {"text": "data.txt", "chat": "data.jsonl", "images": "images"}[dataset.kind])
        data_kind, dataset_name, stored_id = dataset.kind, dataset.name, dataset.id
    spec: dict[str, Any] = {"data": data, "data_kind": data_kind}
    job_params = values.model_dump()
    if kind == "lora":
        base = values.base or ctx.default_model
        if base not in ctx.registry.names("text") or ctx.registry.get(base).info.plugin != "transformers":
            raise InvalidOptionsError(f"{base!r} is not a shared transformers language model; LoRA adapts one of: "
                                      + ", ".join(lora_bases(ctx)) + ".")
        job_params["base"] = base
        spec.update(base_source=ctx.registry.get(base).options.source, cache_dir=ctx.registry.cache_dir)
    elif kind == "lstm":
        job_params.pop("max_steps") if job_params.get("max_steps") is None else None
    return ctx.jobs.submit(owner, kind, name, job_params, spec, dataset_id=stored_id, dataset_name=dataset_name)


def lora_bases(ctx: AppContext) -> list[str]:
    return [n for n in ctx.registry.names("text") if ctx.registry.get(n).info.plugin == "transformers"]


# ------------------------------------------------------------------ the result is a model

def register_job_model(ctx: AppContext, job: Job) -> str | None:
    """Add a finished job's model to the registry for its owner; write its model card."""
    if job.state != "done" or not job.artifacts.get("plugin"):
        return None
    name = registry_name(job.owner, job.name)
    if name not in ctx.registry.names(owner=job.owner):
        ctx.registry.add(ModelSpec(name, job.artifacts["plugin"], dict(job.artifacts.get("options", {})), owner=job.owner))
    folder = Path(job.artifacts["folder"])
    card = folder / "MODEL_CARD.md"
    if not card.exists():
        write_private(card, model_card(job).encode("utf-8"))
    return name


def job_image_meta(job: Job, path: Path) -> dict[str, Any]:
    """The claims of a PNG a job wrote: which job, model, family and data; an epoch's samples or the curves."""
    epoch = re.search(r"epoch(\d+)", path.name)
    curves = path.name.startswith("curves")
    meta: dict[str, Any] = {
        "kind": "training-curves" if curves else "training-samples", "generator": registry_name(job.owner, job.name),
        "plugin": job.kind, "weights_hash": None, "job": job.id, "family": job.kind, "dataset": job.dataset,
        "params": dict(job.params or {}), "file": path.name}
    if epoch:
        meta["epoch"] = int(epoch.group(1))
    if curves:
        meta["digital_source"] = "algorithmic"  # a chart the studio drew, not a model's output
    return meta


def sign_job_images(ctx: AppContext, job: Job, paths: list[Path]) -> int:
    """Sign, in place, each complete PNG of `paths` that carries no manifest yet; returns how many were signed.
    A file still being written (the next epoch's curves) is left for the next call; a failure is logged, never
    raised (the job goes on, the page shows the file unsigned)."""
    if not ctx.signer.enabled:
        return 0
    signed = 0
    for path in paths:
        try:
            data = path.read_bytes()
            if not provenance.png_complete(data) or provenance.has_manifest(data):
                continue
            meta = job_image_meta(job, path)
            what = "loss curves" if meta["kind"] == "training-curves" else (
                f"samples after epoch {meta['epoch']}" if "epoch" in meta else "samples")
            write_private(path, ctx.signer.sign(data, "image/png", meta, f"{what} of {meta['generator']} (training)"))
            signed += 1
        except Exception:  # noqa: BLE001 - a file that cannot be signed must not stop the job
            log.warning("Could not sign %s of job %s", path, job.id, exc_info=True)
    return signed


def start_jobs(ctx: AppContext) -> None:
    """At app start: register the owners' finished models, then run the queue."""
    ctx.jobs.on_done = lambda job: register_job_model(ctx, job)
    ctx.jobs.on_images = lambda job, paths: sign_job_images(ctx, job, paths)
    from sqlalchemy import select

    with ctx.store.begin() as s:
        finished = list(s.scalars(select(Job).where(Job.state.in_(("done", "failed", "cancelled", "interrupted")))))
    for job in finished:
        # PNGs left unsigned (a job from before signing, an app killed mid-epoch) are signed now
        sign_job_images(ctx, job, sorted(Path(job.artifacts.get("folder") or "/nonexistent").glob("*.png")))
        if job.state != "done":
            continue
        try:
            register_job_model(ctx, job)
        except Exception:  # noqa: BLE001 - one damaged model must not stop the others
            log.exception("The model of job %s could not be registered", job.id)
    ctx.jobs.start()


def delete_job(ctx: AppContext, owner: str, job_id: str) -> None:
    job = ctx.jobs.get(owner, job_id)
    name = registry_name(owner, job.name)
    if job.state == "done" and ctx.registry.visible(name, owner) and ctx.registry.owner_of(name) == owner:
        ctx.registry.remove(name)
    ctx.jobs.delete(owner, job_id)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without their zone; they were written in UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment is not None and moment.tzinfo is None else moment


def model_card(job: Job) -> str:
    figures = job.artifacts.get("figures", {})
    finished, started = aware(job.finished_at), aware(job.started_at)
    seconds = (finished - started).total_seconds() if finished and started else None
    lines = [f"# {job.name}", "", f"A {FAMILY_LABELS.get(job.kind, job.kind)} model trained in AIGC Studio by "
             f"{job.owner}.", "", "## Data", "", f"- dataset: {job.dataset}", "", "## Parameters", ""]
    lines += [f"- {k}: {v}" for k, v in job.params.items() if v is not None]
    lines += ["", "## Run", "",
              f"- finished: {finished:%Y-%m-%d %H:%M UTC}" if finished else "",
              f"- wall time: {seconds:.0f} s" if seconds is not None else "",
              f"- machine: {platform.machine()} {platform.processor() or ''} ({platform.system()}), "
              f"python {platform.python_version()}", "", "## Figures", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in figures.items()]
    epochs = [p for p in job.metrics if p.get("type") == "epoch"]
    if epochs:
        keys = [k for k in epochs[-1] if k not in ("type", "time", "samples")]
        lines += ["", "## Curves (per epoch)", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(f"{p.get(k):.4g}" if isinstance(p.get(k), float) else str(p.get(k, ""))
                                    for k in keys) + " |" for p in epochs]
    return "\n".join(line for line in lines if line is not None) + "\n"


# ------------------------------------------------------------------ what the Train tab shows

STEP_SKIP = {"type", "time", "step", "total", "epoch", "seconds", "lr"}
EPOCH_SKIP = {"type", "time", "step", "epoch", "train_seconds", "samples", "sample", "lr"}


@dataclass
class JobView:
    job: Job
    status: str  # one Markdown line: state, progress, ETA or queue position
    steps: list[dict[str, Any]]  # {"step", "series", "value"} for the loss plot
    epochs: list[dict[str, Any]]  # {"epoch", "series", "value"} for the per-epoch plot
    samples: Path | None  # the last per-epoch sample grid (image families)
    text_sample: str  # the last per-epoch sample (the char-LSTM)
    figures: dict[str, Any]
    card: str


def eta_seconds(job: Job) -> float | None:
    """From the pace of the recent steps: (time per step) x (steps left)."""
    steps = [p for p in job.metrics if p.get("type") == "step" and "time" in p and p.get("total")]
    if len(steps) < 2 or job.state != "running":
        return None
    recent = steps[-20:]
    pace = (recent[-1]["time"] - recent[0]["time"]) / max(recent[-1]["step"] - recent[0]["step"], 1)
    return max(0.0, pace * (recent[-1]["total"] - recent[-1]["step"]))


def status_line(ctx: AppContext, job: Job) -> str:
    parts = [f"**{job.name}** ({FAMILY_LABELS.get(job.kind, job.kind)}) — **{job.state}**"]
    if job.state == "queued":
        parts.append(f"place {ctx.jobs.queue_position(job)} in the queue")
    if job.state in ("running", "cancelled", "interrupted", "failed"):
        parts.append(f"{job.progress * 100:.0f} %")
    eta = eta_seconds(job)
    if eta is not None:
        parts.append(f"about {eta / 60:.0f} min left" if eta >= 90 else f"about {eta:.0f} s left")
    if job.state == "done":
        parts.append(f"use it as **{registry_name(job.owner, job.name)}**")
        parts += headline_figures(job.artifacts.get("figures") or {})
    if job.state in ("cancelled", "interrupted", "failed"):
        parts.append("Resume continues from the last checkpoint")
    if job.error:
        parts.append(job.error)
    return " · ".join(parts)


def headline_figures(figures: dict[str, Any]) -> list[str]:
    """The end figures a person looks for first, as short phrases (the model card lists them all)."""
    def number(key: str) -> float | None:
        value = figures.get(key)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    out = []
    before, after = number("ppl_before"), number("ppl_after")
    if before is not None and after is not None:
        out.append(f"held-out perplexity {before:.2f} → {after:.2f} ({(after / before - 1) * 100:+.1f} %)")
    for key, label, fmt in (("val_bpc", "held-out bits/char", ".3f"), ("digit_accuracy", "digit accuracy", ".1%"),
                            ("frechet_distance", "Fréchet distance", ".2f")):
        value = number(key)
        if value is not None:
            out.append(f"{label} {value:{fmt}}")
    return out


def job_view(ctx: AppContext, owner: str, job_id: str, max_points: int = 400) -> JobView:
    job = ctx.jobs.get(owner, job_id)
    steps, epochs = [], []
    step_points = [p for p in job.metrics if p.get("type") == "step"]
    every = max(1, len(step_points) // max_points)
    for p in step_points[::every]:
        steps += [{"step": p["step"], "series": k, "value": v} for k, v in p.items()
                  if k not in STEP_SKIP and isinstance(v, int | float) and math.isfinite(v)]
    for p in job.metrics:
        if p.get("type") == "epoch":
            epochs += [{"epoch": p.get("epoch", 0), "series": k, "value": v} for k, v in p.items()
                       if k not in EPOCH_SKIP and isinstance(v, int | float) and math.isfinite(v)]
    folder = Path(job.artifacts.get("folder", ""))
    samples = [Path(s) for s in job.artifacts.get("samples", [])]
    last = samples[-1] if samples and samples[-1].is_file() and folder in samples[-1].parents else None
    card_path = folder / "MODEL_CARD.md"
    card = card_path.read_text(encoding="utf-8") if job.state == "done" and card_path.is_file() else ""
    return JobView(job, status_line(ctx, job), steps, epochs, last, job.artifacts.get("last_sample", ""),
                   job.artifacts.get("figures", {}), card)
