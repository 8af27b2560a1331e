"""Training jobs: the state machine, a real worker process, Stop, kill -9 and resume, owners kept apart."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from generators.base import InvalidOptionsError, UnknownGeneratorError
from storage.models import Job
from webui.services import datasets as ds
from webui.services import training
from webui.services.jobs import JobError

TEXT = "".join(f"Line {i}: the cat sat on the mat and looked at the hat.\n" for i in range(120))
TINY_LSTM = {"hidden": 16, "layers": 1, "seq_len": 16, "batch_size": 4, "max_steps": 3, "lr": 0.01}


def wait_for(predicate: Any, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def epochs_done(job: Job) -> list[int]:
    return [p["epoch"] for p in job.metrics if p.get("type") == "epoch"]


def test_a_job_runs_to_done_and_its_model_is_its_owners_only(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    job = training.start_training(ctx, "ann", "lstm", text.id, "cats", {**TINY_LSTM, "epochs": 2})
    assert job.state == "queued" and ctx.jobs.queue_position(job) == 1
    job = ctx.jobs.wait("ann", job.id, 180)
    assert job.state == "done", (job.error, job.log)
    assert job.progress == 1.0 and epochs_done(job) == [1, 2]
    assert [p["step"] for p in job.metrics if p["type"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert job.artifacts["figures"]["val_bpc"] > 0 and job.artifacts["last_sample"]
    name = "ann/cats"
    wait_for(lambda: name in ctx.registry.names(owner="ann"))
    assert name in ctx.registry.names("text", owner="ann")
    assert name not in ctx.registry.names() and name not in ctx.registry.names(owner="bob")
    assert name not in [d["name"] for d in ctx.registry.describe(owner="bob")]
    with ctx.registry.use(name, owner="ann") as gen:
        assert gen.loaded
    with pytest.raises(UnknownGeneratorError) as refused, ctx.registry.use(name, owner="bob"):
        pass
    assert str(refused.value).endswith("Available models: fake.")  # ann's model is not listed to bob
    card = (Path(job.artifacts["folder"]) / "MODEL_CARD.md").read_text()
    assert "cats" in card and "val_bpc" in card and "| epoch |" in card
    # bob can neither see nor touch ann's job or dataset
    assert ctx.jobs.list("bob") == [] and ds.list_datasets(ctx, "bob") == []
    for action in (ctx.jobs.get, ctx.jobs.cancel, ctx.jobs.resume, ctx.jobs.delete):
        with pytest.raises(Exception, match="No such training job"):
            action("bob", job.id)
    with pytest.raises(Exception, match="No such dataset"):
        training.start_training(ctx, "bob", "lstm", text.id, "mine", TINY_LSTM)
    with pytest.raises(InvalidOptionsError, match="already have a model or job named"):
        training.start_training(ctx, "ann", "lstm", text.id, "cats", TINY_LSTM)
    # deleting the job removes the model and its files
    training.delete_job(ctx, "ann", job.id)
    assert name not in ctx.registry.names(owner="ann") and not Path(job.artifacts["folder"]).exists()


def test_the_app_leaves_a_running_jobs_cpus_to_it_and_takes_them_back(jobs_ctx: Any) -> None:
    """While a job runs, the runner tells the app how many CPU threads jobs use (the app lowers its compute
    lane's threads by that much), and 0 once none runs."""
    ctx = jobs_ctx
    told: list[int] = []
    ctx.jobs.on_cpus = told.append
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    job = ctx.jobs.wait("ann", training.start_training(ctx, "ann", "lstm", text.id, "c", TINY_LSTM).id, 180)
    assert job.state == "done", job.error
    wait_for(lambda: len(told) == 2)
    assert told == [ctx.jobs.threads, 0]


def test_wrong_family_data_and_bad_parameters_are_refused_before_queueing(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    with pytest.raises(InvalidOptionsError, match="GAN trains on images; 'cats' holds text"):
        training.start_training(ctx, "ann", "gan", text.id, "g")
    with pytest.raises(InvalidOptionsError, match="epochs"):
        training.start_training(ctx, "ann", "lstm", text.id, "l", {"epochs": 0})
    with pytest.raises(InvalidOptionsError, match="bogus"):
        training.start_training(ctx, "ann", "lstm", text.id, "l", {"bogus": 1})
    with pytest.raises(InvalidOptionsError, match="not a shared transformers language model"):
        training.start_training(ctx, "ann", "lora", text.id, "l")  # the fake model is no transformers LM
    with pytest.raises(InvalidOptionsError, match="Give the model a name"):
        training.start_training(ctx, "ann", "lstm", text.id, "  ")
    assert ctx.jobs.list("ann") == []


def test_kill_9_leaves_it_interrupted_and_resume_continues_from_the_checkpoint(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    job = training.start_training(ctx, "ann", "lstm", text.id, "cats", {**TINY_LSTM, "epochs": 40})
    wait_for(lambda: epochs_done(ctx.jobs.get("ann", job.id)))
    os.kill(ctx.jobs.pid(job.id), signal.SIGKILL)
    killed = ctx.jobs.wait("ann", job.id, 60)
    assert killed.state == "interrupted" and "exit code -9" in killed.error
    done_before = epochs_done(killed)
    assert 1 <= len(done_before) < 40
    checkpoint = Path(killed.artifacts["folder"]) / "checkpoint.pt"
    assert checkpoint.is_file()
    resumed = ctx.jobs.resume("ann", job.id)
    assert resumed.state == "queued"
    finished = ctx.jobs.wait("ann", job.id, 300)
    assert finished.state == "done", (finished.error, finished.log)
    epochs = epochs_done(finished)
    assert epochs[-1] == 40 and sorted(set(epochs)) == list(range(1, 41))  # no epoch lost, none trained from scratch
    worker_log = (Path(finished.artifacts["folder"]) / "worker.log").read_text()
    assert "resumed from epoch" in worker_log


def test_stop_cancels_a_running_job_and_a_queued_one(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    first = training.start_training(ctx, "ann", "lstm", text.id, "one", {**TINY_LSTM, "epochs": 200})
    second = training.start_training(ctx, "ann", "lstm", text.id, "two", {**TINY_LSTM, "epochs": 2})
    wait_for(lambda: ctx.jobs.get("ann", first.id).state == "running")
    assert ctx.jobs.queue_position(ctx.jobs.get("ann", second.id)) == 1  # one job at a time: it waits
    assert ctx.jobs.cancel("ann", second.id).state == "cancelled"
    stopped = ctx.jobs.cancel("ann", first.id)
    assert stopped.state == "cancelled" and ctx.jobs.pid(first.id) is None
    with pytest.raises(JobError, match="only a queued or running job"):
        ctx.jobs.cancel("ann", first.id)
    assert "ann/one" not in ctx.registry.names(owner="ann")


def test_jobs_left_running_by_a_dead_app_become_interrupted_at_start(make_ctx: Any) -> None:
    ctx = make_ctx()
    with ctx.store.begin() as s:
        s.add(Job(id="a" * 32, owner="ann", kind="lstm", name="x", params={}, state="running", metrics=[],
                  artifacts={"folder": "/nonexistent"}, log="", instance_id="f" * 32))
    training.start_jobs(ctx)
    try:
        job = ctx.jobs.get("ann", "a" * 32)
        assert job.state == "interrupted" and "resume" in job.log
    finally:
        ctx.jobs.close()


def test_a_failing_job_says_why(jobs_ctx: Any) -> None:
    ctx = jobs_ctx
    text = ds.add_dataset(ctx, "ann", "cats.txt", TEXT.encode())
    job = training.start_training(ctx, "ann", "lstm", text.id, "big", {**TINY_LSTM, "batch_size": 512, "seq_len": 1024})
    failed = ctx.jobs.wait("ann", job.id, 120)
    assert failed.state == "failed" and "shorter than one batch" in failed.error
    spec = json.loads((Path(failed.artifacts["folder"]) / "spec.json").read_text())
    assert spec["kind"] == "lstm"


def test_digit_figures_measure_a_trained_gan_with_the_shipped_classifier() -> None:
    from generators.training.worker import digit_figures

    root = Path(__file__).resolve().parent.parent / "generators" / "image" / "weights"
    figures = digit_figures("gan", root / "gan-mnist32", lambda event: None, n=100)
    assert figures["digit_accuracy"] > 0.9 and 0 < figures["frechet_distance"] < 100


def test_a_finished_fine_tune_says_its_held_out_perplexity_before_and_after(make_ctx: Any) -> None:
    ctx = make_ctx()
    figures = {"ppl_before": 20.0, "ppl_after": 14.0, "ppl_change": -0.3, "steps": 8}
    metrics = [{"type": "epoch", "epoch": 0, "step": 0, "val_ppl": 20.0},
               {"type": "epoch", "epoch": 1, "step": 8, "val_ppl": 14.0}]
    job = Job(id="b" * 32, owner="ann", kind="lora", name="prose", params={"rank": 16}, state="done", metrics=metrics,
              artifacts={"folder": "", "figures": figures}, log="", dataset="my prose")
    line = training.status_line(ctx, job)
    assert "held-out perplexity 20.00 → 14.00 (-30.0 %)" in line and "use it as **ann/prose**" in line
    card = training.model_card(job)
    assert "- ppl_before: 20" in card and "- ppl_after: 14" in card and "| 0 | 0 | 20 |" in card
    assert not training.headline_figures({"ppl_before": 20.0, "ppl_after": float("nan")})
