"""The Train workspace: upload data, pick a family and its parameters, Train; watch the curves, samples and
ETA; Stop / Resume; the figures and model card at the end. The finished model is in your model list."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from ..errors import ui_errors
from ..services import datasets as ds
from ..services import training
from ..services.context import AppContext
from . import FAST
from .image import served

DIGITS_LABEL = "MNIST digits (built in, 5,000 images)"
REFRESH_S = 2.0
NO_JOB = "No training job yet: upload data, pick a family and press **Train**."


def _owner(ctx: AppContext, request: gr.Request | None) -> str:
    return ctx.owner_for(getattr(request, "username", None))


def dataset_choices(ctx: AppContext, owner: str) -> list[tuple[str, str]]:
    return [(ds.describe(d), d.id) for d in ds.list_datasets(ctx, owner)] + [(DIGITS_LABEL, training.DIGITS)]


def job_choices(ctx: AppContext, owner: str) -> list[tuple[str, str]]:
    return [(f"{j.name} · {training.FAMILY_LABELS.get(j.kind, j.kind)}", j.id) for j in ctx.jobs.list(owner)]


def build(ctx: AppContext) -> Any:
    """Lay out the Train tab; returns the function that fills it for the person on the page."""
    bases = training.lora_bases(ctx)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            gr.Markdown("### 1. Data")
            upload = gr.File(label="Upload: .txt (UTF-8), .jsonl (chats, OpenAI messages) or .zip of images",
                             file_types=[".txt", ".jsonl", ".zip"], type="filepath", elem_id="train-upload")
            with gr.Row():
                dataset_name = gr.Textbox(label="Dataset name", placeholder="(the file's name)", scale=3)
                add = gr.Button("Add dataset", scale=1, elem_id="train-add")
            dataset = gr.Dropdown([(DIGITS_LABEL, training.DIGITS)], value=training.DIGITS, label="Dataset",
                                  elem_id="train-dataset")
            delete_dataset = gr.Button("Delete dataset", size="sm")
            gr.Markdown("### 2. Model")
            family = gr.Radio([(label, kind) for kind, label in training.FAMILY_LABELS.items()], value="lora",
                              label="Family", elem_id="train-family")
            name = gr.Textbox(label="Name of the new model", value="my-model", elem_id="train-name")
            with gr.Group(visible=True) as lora_box:
                base = gr.Dropdown(bases, value=ctx.default_model if ctx.default_model in bases else None,
                                   label="Base language model")
                with gr.Row():
                    rank = gr.Number(16, label="Rank", precision=0, minimum=1, maximum=256)
                    alpha = gr.Number(32, label="Alpha", precision=0, minimum=1, maximum=1024)
                    lora_lr = gr.Number(1e-3, label="Learning rate", minimum=0)
                with gr.Row():
                    max_length = gr.Number(256, label="Max length (tokens)", precision=0, minimum=16, maximum=4096)
                    lora_batch = gr.Number(4, label="Batch size", precision=0, minimum=1, maximum=64)
                    max_steps = gr.Number(0, label="Max steps (0: all)", precision=0, minimum=0)
            with gr.Group(visible=False) as lstm_box, gr.Row():
                hidden = gr.Number(256, label="Hidden units", precision=0, minimum=16, maximum=2048)
                layers = gr.Number(2, label="Layers", precision=0, minimum=1, maximum=4)
                seq_len = gr.Number(128, label="Sequence length", precision=0, minimum=8, maximum=1024)
                lstm_lr = gr.Number(2e-3, label="Learning rate", minimum=0)
            with gr.Group(visible=False) as image_box, gr.Row():
                image_batch = gr.Number(64, label="Batch size", precision=0, minimum=2, maximum=1024)
                size = gr.Radio([32, 64], value=32, label="Image size (px)")
            epochs = gr.Number(2, label="Epochs", precision=0, minimum=1, maximum=500, elem_id="train-epochs")
            train = gr.Button("Train", variant="primary", elem_id="train-start")
        with gr.Column(scale=3, min_width=400):
            gr.Markdown("### 3. Jobs")
            with gr.Row():
                job = gr.Dropdown([], label="Job", scale=4, elem_id="train-job")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="train-stop")
                resume = gr.Button("Resume", scale=1, elem_id="train-resume")
                delete_job = gr.Button("Delete", scale=1)
            status = gr.Markdown(NO_JOB, elem_id="train-status")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="value", color="series", title="Training loss", height=260,
                                        elem_id="train-loss")
                epoch_plot = gr.LinePlot(x="epoch", y="value", color="series", title="Per epoch (held out)",
                                         height=260, elem_id="train-epochs-plot")
            samples = gr.Image(label="Samples after the last epoch (a signed PNG: Verify tells who made it)",
                               type="filepath", visible=False, height=300, elem_id="train-samples")
            text_sample = gr.Textbox(label="Sample after the last epoch", visible=False, lines=4)
            card = gr.Markdown(elem_id="train-card")
            log = gr.Textbox(label="Log", lines=6, max_lines=12, autoscroll=True)
            timer = gr.Timer(REFRESH_S)

    # ---------------------------------------------------------------- handlers
    seen = gr.State(None)  # what the page shows now: the timer sends only what changed
    shown = [status, loss_plot, epoch_plot, samples, text_sample, card, log, seen]

    def show(job_id: str | None, last: Any, request: gr.Request) -> dict[Any, Any]:
        if not job_id:
            return {status: NO_JOB, loss_plot: None, epoch_plot: None, samples: gr.update(visible=False),
                    text_sample: gr.update(visible=False), card: "", log: "", seen: None}
        view = training.job_view(ctx, _owner(ctx, request), job_id)
        key = [job_id, view.status, len(view.job.metrics), len(view.job.log), str(view.samples)]
        if key == last:
            return {c: gr.skip() for c in shown}
        if last and last[0] == job_id and last[4] == key[4]:  # the same grid: not sent again
            grid = gr.update(visible=view.samples is not None)
        elif view.samples is not None:  # the file itself (signed by the job runner), copied into Gradio's cache
            grid = gr.update(value=served(view.samples), visible=True)
        else:
            grid = gr.update(value=None, visible=False)
        return {status: view.status, loss_plot: _plot(view.steps, "step"), epoch_plot: _plot(view.epochs, "epoch"),
                samples: grid,
                text_sample: gr.update(value=view.text_sample, visible=bool(view.text_sample)),
                card: view.card, log: view.job.log, seen: key}

    def fill(current: str | None, request: gr.Request) -> dict[Any, Any]:
        owner = _owner(ctx, request)
        jobs = job_choices(ctx, owner)
        datasets = dataset_choices(ctx, owner)
        keep = current if current in [j for _, j in jobs] else (jobs[0][1] if jobs else None)
        return {dataset: gr.update(choices=datasets), job: gr.update(choices=jobs, value=keep)}

    @ui_errors
    def add_dataset(path: str | None, label: str, request: gr.Request) -> dict[Any, Any]:
        if not path:
            raise gr.Error("Choose a file to upload first.")
        from pathlib import Path

        owner = _owner(ctx, request)
        row = ds.add_dataset(ctx, owner, Path(path).name, Path(path).read_bytes(), label)
        gr.Info(f"Added {ds.describe(row)}.")
        return {dataset: gr.update(choices=dataset_choices(ctx, owner), value=row.id), upload: None}

    @ui_errors
    def remove_dataset(dataset_id: str, request: gr.Request) -> dict[Any, Any]:
        owner = _owner(ctx, request)
        if dataset_id == training.DIGITS:
            raise gr.Error("The built-in digits cannot be deleted.")
        ds.delete_dataset(ctx, owner, dataset_id)
        return {dataset: gr.update(choices=dataset_choices(ctx, owner), value=training.DIGITS)}

    @ui_errors
    def start(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        owner = _owner(ctx, request)
        kind = values[family]
        if kind == "lora":
            params = {"base": values[base] or "", "rank": values[rank], "alpha": values[alpha], "lr": values[lora_lr],
                      "max_length": values[max_length], "batch_size": values[lora_batch],
                      "max_steps": values[max_steps] or None}
        elif kind == "lstm":
            params = {"hidden": values[hidden], "layers": values[layers], "seq_len": values[seq_len],
                      "lr": values[lstm_lr]}
        else:
            params = {"batch_size": values[image_batch], "size": values[size]}
        params["epochs"] = values[epochs]
        made = training.start_training(ctx, owner, kind, values[dataset], values[name], params)
        return {job: gr.update(choices=job_choices(ctx, owner), value=made.id)}

    @ui_errors
    def act(action: str, job_id: str | None, request: gr.Request) -> dict[Any, Any]:
        owner = _owner(ctx, request)
        if not job_id:
            raise gr.Error("Pick a job first.")
        if action == "stop":
            ctx.jobs.cancel(owner, job_id)
        elif action == "resume":
            ctx.jobs.resume(owner, job_id)
        else:
            training.delete_job(ctx, owner, job_id)
        jobs = job_choices(ctx, owner)
        keep = job_id if action != "delete" else (jobs[0][1] if jobs else None)
        return {job: gr.update(choices=jobs, value=keep)}

    def switch_family(kind: str) -> dict[Any, Any]:
        return {lora_box: gr.update(visible=kind == "lora"), lstm_box: gr.update(visible=kind == "lstm"),
                image_box: gr.update(visible=kind not in ("lora", "lstm"))}

    private = {"api_visibility": "private"}
    family.change(switch_family, family, [lora_box, lstm_box, image_box], **FAST, **private)
    add.click(add_dataset, [upload, dataset_name], [dataset, upload], **FAST, api_name="train_add_dataset")
    delete_dataset.click(remove_dataset, dataset, [dataset], **FAST, **private)
    inputs = {family, dataset, name, base, rank, alpha, lora_lr, max_length, lora_batch, max_steps, hidden, layers,
              seq_len, lstm_lr, image_batch, size, epochs}
    train.click(start, inputs, [job], **FAST, **private)
    def stop_job(job_id: str | None, request: gr.Request) -> dict[Any, Any]:
        return act("stop", job_id, request)

    def resume_job(job_id: str | None, request: gr.Request) -> dict[Any, Any]:
        return act("resume", job_id, request)

    def remove_job(job_id: str | None, request: gr.Request) -> dict[Any, Any]:
        return act("delete", job_id, request)

    stop.click(stop_job, job, [job], **FAST, api_name="train_stop")
    resume.click(resume_job, job, [job], **FAST, api_name="train_resume")
    delete_job.click(remove_job, job, [job], **FAST, **private)
    job.change(ui_errors(show), [job, seen], shown, **FAST, **private)

    # the same actions for scripts (gradio_client): typed values, no page components
    @ui_errors
    def train_api(family: str, dataset: str, name: str, params: dict[str, Any], request: gr.Request) -> str:
        """Queue a training job; returns its id. family: lora | lstm | gan | vae | diffusion; dataset: an id from
        /train_add_dataset or 'mnist5k'; params: the family's parameters (defaults for those left out)."""
        return training.start_training(ctx, _owner(ctx, request), family, dataset, name, params or {}).id

    @ui_errors
    def job_api(job_id: str, request: gr.Request) -> dict[str, Any]:
        """A job's state, progress, figures, per-epoch points and the model name to use once it is done."""
        view = training.job_view(ctx, _owner(ctx, request), job_id)
        j = view.job
        return {"id": j.id, "name": j.name, "kind": j.kind, "state": j.state, "progress": j.progress,
                "status": view.status, "error": j.error, "figures": view.figures,
                "epochs": [p for p in j.metrics if p.get("type") == "epoch"],
                "model": training.registry_name(j.owner, j.name) if j.state == "done" else None}

    gr.api(train_api, api_name="train")
    gr.api(job_api, api_name="train_job")
    timer.tick(ui_errors(show), [job, seen], shown, **FAST, **private)
    return lambda demo, select: (demo.load(fill, job, [dataset, job], **FAST, **private),
                                 select(fill, job, [dataset, job], **FAST, **private))


def _plot(points: list[dict[str, Any]], x: str) -> Any:
    """A plot's update: hidden while there is nothing to draw. Never an empty table — Gradio's plot takes the
    column types from the first table it receives, and an empty one (no numbers) leaves it drawing no lines
    for every table after."""
    if not points:
        return gr.update(visible=False)
    return gr.update(value=pd.DataFrame(points, columns=[x, "series", "value"]), visible=True)
