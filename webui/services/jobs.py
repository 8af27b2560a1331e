"""Training jobs: rows with a state machine, run one at a time (configurable) by the JobRunner.

    queued ──► running ──► done
       │          ├──────► failed       (the training raised: the message is kept)
       │          ├──────► cancelled    (Stop)
       │          └──────► interrupted  (the process was killed, or the app died while it ran)
       └─────────────────► cancelled
    failed | cancelled | interrupted ──resume──► queued (continues from the last checkpoint)

How a job shares the machine with generation: each job runs in a process of its own
(`generators.training.worker`) with `train_threads` torch threads (default 1), so it never joins the
app's compute-lane OpenMP team, and while jobs run the lane leaves their threads' cores to them
(`on_cpus`: the app lowers the lane's torch threads, `ComputeLane.share_cpus`). Stop terminates
that process (the checkpoint written at the last epoch or every few steps stays); the process dies with
the app, and the next start marks its job `interrupted`. The runner reads the job's events file about
twice a second and writes progress, curve points and log lines into the row.

Everything here is per owner: every function takes the owner and finds only their rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from generators.base import InvalidOptionsError, StudioError
from storage import Store
from storage import repository as repo
from storage.files import private_dir, write_private
from storage.models import Job, new_id, utcnow

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
RESUMABLE = ("failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")
LOG_CHARS = 20_000  # the tail of the log kept in the row
MAX_POINTS = 4_000  # curve points kept per job (older step points are thinned beyond it)


class JobError(StudioError):
    status_code = 409


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    folder: Path
    cancel_requested: bool = False


def owner_folder(data_dir: Path, owner: str) -> Path:
    """DATA_DIR/training/<hash of the owner>: a name no owner string can turn into a path."""
    return Path(data_dir) / "training" / hashlib.sha256(owner.encode("utf-8")).hexdigest()[:20]


def job_folder(data_dir: Path, owner: str, job_id: str) -> Path:
    return owner_folder(data_dir, owner) / "jobs" / job_id


def _thin(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep every epoch point and every other step point once there are too many."""
    if len(points) <= MAX_POINTS:
        return points
    steps = [p for p in points if p.get("type") == "step"]
    keep = {id(p) for p in steps[::2]}
    return [p for p in points if p.get("type") != "step" or id(p) in keep]


class JobRunner:
    """Starts queued jobs (at most `max_running` at once), follows them, and finishes their rows.

    `on_done(job)` is called with the finished row of a successful job (the app registers its model);
    `on_images(job, paths)` with the PNGs a job wrote for a person to see (an epoch's sample grid and the
    curves, before the row names them; at the end every PNG of the run folder), so the app signs them;
    `on_cpus(n)` with the CPU threads the running jobs use, whenever that changes (0 when none runs)."""

    def __init__(self, store: Store, *, max_running: int = 1, threads: int = 1,
                 on_done: Callable[[Job], None] | None = None, poll_s: float = 0.5,
                 python: str = sys.executable,
                 on_images: Callable[[Job, list[Path]], Any] | None = None,
                 on_cpus: Callable[[int], object] | None = None) -> None:
        self.store = store
        self.max_running = max_running
        self.threads = threads
        self.on_done = on_done
        self.on_images = on_images
        self.on_cpus = on_cpus
        self.poll_s = poll_s
        self.python = python
        self._running: dict[str, _Running] = {}
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> JobRunner:
        """Mark jobs left `running` by a dead process `interrupted`, then start serving the queue."""
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()
        return self

    def recover(self) -> int:
        with self.store.begin() as s:
            rows = list(s.scalars(select(Job).where(Job.state == "running")))
            count = 0
            for row in rows:
                if row.instance_id == self.store.instance_id and row.id in self._running:
                    continue
                if self.store.shared and self.store._instance_alive(s, row.instance_id):
                    continue  # another app instance runs it
                row.state = "interrupted"
                row.finished_at = utcnow()
                row.log = (row.log + "\nThe app stopped while this job ran; resume continues from its last "
                           "checkpoint.")[-LOG_CHARS:]
                count += 1
        if count:
            log.warning("Marked %d training job(s) cut off by the last shutdown as interrupted", count)
        return count

    def close(self, wait_s: float = 5.0) -> None:
        """Stop every running job (they can be resumed) and the scheduler."""
        with self._cv:
            self._closed = True
            running = list(self._running.items())
            self._cv.notify_all()
        for _, run in running:
            self._terminate(run.process, wait_s)

    # ------------------------------------------------------------ the owner's actions
    def submit(self, owner: str, kind: str, name: str, params: dict[str, Any], spec: dict[str, Any],
               dataset_id: str | None = None, dataset_name: str = "") -> Job:
        """Queue a job. `spec` is what the worker needs besides the run folder (data, base model…)."""
        job_id = new_id()
        folder = private_dir(job_folder(self.store.data_dir, owner, job_id))
        write_private(folder / "spec.json", json.dumps({**spec, "kind": kind, "params": params}).encode())
        with self.store.begin() as s:
            row = Job(id=job_id, owner=owner, kind=kind, name=name, dataset_id=dataset_id, dataset=dataset_name,
                      params=params, state="queued", metrics=[], artifacts={"folder": str(folder)}, log="")
            s.add(row)
            s.flush()
        self._wake()
        return row

    def get(self, owner: str, job_id: str) -> Job:
        with self.store.begin() as s:
            row = s.get(Job, job_id) if repo.is_row_id(job_id) else None
            if row is None or row.owner != owner:
                raise repo.NotFoundError("No such training job; it may have been deleted.")
            return row

    def list(self, owner: str, limit: int = 100) -> list[Job]:
        with self.store.begin() as s:
            return list(s.scalars(select(Job).where(Job.owner == owner).order_by(Job.created_at.desc()).limit(limit)))

    def queue_position(self, job: Job) -> int:
        """1 = next to start; 0 = not waiting."""
        if job.state != "queued":
            return 0
        with self.store.begin() as s:
            ahead = s.scalars(select(Job.id).where(Job.state == "queued", Job.created_at <= job.created_at)).all()
        return max(1, len(ahead))

    def cancel(self, owner: str, job_id: str) -> Job:
        job = self.get(owner, job_id)
        with self._cv:
            run = self._running.get(job_id)
            if run is not None:
                run.cancel_requested = True
        if run is not None:
            self._terminate(run.process)
            return self._wait_finished(owner, job_id)
        with self.store.begin() as s:
            row = s.get(Job, job.id)
            if row.state != "queued":
                raise JobError(f"The job is {row.state}; only a queued or running job can be stopped.")
            row.state, row.finished_at = "cancelled", utcnow()
            return row

    def resume(self, owner: str, job_id: str) -> Job:
        """Queue a stopped, failed or interrupted job again; it continues from its last checkpoint."""
        job = self.get(owner, job_id)
        if job.state not in RESUMABLE:
            raise JobError(f"The job is {job.state}; only a stopped, failed or interrupted job can be resumed.")
        folder = Path(job.artifacts["folder"])
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
        write_private(folder / "spec.json", json.dumps({**spec, "resume": True}).encode())
        with self.store.begin() as s:
            row = s.get(Job, job.id)
            row.state, row.error, row.finished_at = "queued", None, None
            row.log = (row.log + "\nResumed: continuing from the last checkpoint.")[-LOG_CHARS:]
        self._wake()
        return self.get(owner, job_id)

    def delete(self, owner: str, job_id: str) -> Job:
        """Remove a finished job, its files (and so its model)."""
        job = self.get(owner, job_id)
        if job.state in ("queued", "running"):
            raise JobError("Stop the job before deleting it.")
        with self.store.begin() as s:
            s.delete(s.get(Job, job.id))
        shutil.rmtree(job.artifacts.get("folder", ""), ignore_errors=True)
        return job

    def wait(self, owner: str, job_id: str, timeout_s: float = 600.0) -> Job:
        """Block until the job has finished (tests, scripts)."""
        return self._wait_finished(owner, job_id, timeout_s)

    def pid(self, job_id: str) -> int | None:
        with self._cv:
            run = self._running.get(job_id)
            return run.process.pid if run else None

    # ------------------------------------------------------------ the scheduler
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and len(self._running) >= self.max_running:
                    self._cv.wait(1.0)
                if self._closed:
                    return
            with self.store.begin() as s:
                next_id = s.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.created_at).limit(1)).first()
            if next_id is None:
                with self._cv:
                    self._cv.wait(1.0)
                continue
            try:
                self._launch(next_id)
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the queue
                log.exception("Starting job %s failed", next_id)
                with self.store.begin() as s:
                    row = s.get(Job, next_id)
                    row.state, row.error, row.finished_at = "failed", f"The job could not start: {exc}", utcnow()

    def _launch(self, job_id: str) -> None:
        with self.store.begin() as s:
            row = s.get(Job, job_id)
            if row is None or row.state != "queued":
                return
            folder = Path(row.artifacts["folder"])
            spec_path = folder / "spec.json"
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            write_private(spec_path, json.dumps({**spec, "out": str(folder), "threads": self.threads}).encode())
            env = {**os.environ, "AIGC_JOB_PARENT": str(os.getpid()), "OMP_NUM_THREADS": str(self.threads),
                   "MKL_NUM_THREADS": str(self.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
            with open(folder / "worker.log", "ab") as out:
                process = subprocess.Popen([self.python, "-m", "generators.training.worker", str(spec_path)],
                                           cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            row.state, row.started_at, row.finished_at = "running", utcnow(), None
            row.instance_id = self.store.instance_id
            with self._cv:
                self._running[job_id] = _Running(process, folder)
        self._cpus_changed()
        threading.Thread(target=self._follow, args=(job_id,), name=f"job-{job_id[:8]}", daemon=True).start()

    def _cpus_changed(self) -> None:
        if self.on_cpus is None:
            return
        with self._cv:
            busy = len(self._running) * self.threads
        try:
            self.on_cpus(busy)
        except Exception:  # noqa: BLE001 - sharing the CPUs is an optimisation; the job runs either way
            log.exception("Could not share the CPUs with the training jobs")

    # ------------------------------------------------------------ following one job
    def _follow(self, job_id: str) -> None:
        run = self._running[job_id]
        events_path = run.folder / "events.jsonl"
        offset = 0
        with self.store.begin() as s:
            row = s.get(Job, job_id)
            points, log_text, artifacts = list(row.metrics), row.log, dict(row.artifacts)
            job = row
        outcome: dict[str, Any] = {}
        while True:
            exited = run.process.poll() is not None
            events, offset = _read_events(events_path, offset)
            if events:
                progress = None
                images: list[Path] = []
                for event in events:
                    kind = event.get("type")
                    if kind in ("step", "epoch"):
                        points.append({k: v for k, v in event.items() if k != "sample"})
                        if kind == "step" and event.get("total"):
                            progress = min(1.0, event["step"] / event["total"])
                        if kind == "epoch" and event.get("samples"):
                            artifacts.setdefault("samples", []).append(event["samples"])
                            images.append(Path(event["samples"]))
                        if kind == "epoch" and (run.folder / "curves.png").is_file():
                            images.append(run.folder / "curves.png")
                        if kind == "epoch" and event.get("sample"):
                            artifacts["last_sample"] = event["sample"]
                    elif kind == "log":
                        log_text = (log_text + "\n" + str(event.get("message", ""))).strip()[-LOG_CHARS:]
                    elif kind in ("done", "error"):
                        outcome = event
                points = _thin(points)
                if images:
                    self._images(job, list(dict.fromkeys(images)))  # before the page learns of them
                with self.store.begin() as s:
                    row = s.get(Job, job_id)
                    row.metrics, row.log, row.artifacts = list(points), log_text, dict(artifacts)
                    if progress is not None:
                        row.progress = progress
            if exited:
                break
            time.sleep(self.poll_s)
        code = run.process.returncode
        self._images(job, sorted(run.folder.glob("*.png")))  # whatever an epoch left unsigned (a race, a crash)
        with self.store.begin() as s:
            row = s.get(Job, job_id)
            row.finished_at = utcnow()
            if outcome.get("type") == "done":
                row.state, row.progress = "done", 1.0
                row.artifacts = {**artifacts, "figures": outcome.get("figures", {}), "plugin": outcome.get("plugin"),
                                 "options": outcome.get("options", {})}
            elif run.cancel_requested:
                row.state = "cancelled"
                row.log = (row.log + "\nStopped; resume continues from the last checkpoint.")[-LOG_CHARS:]
            elif outcome.get("type") == "error":
                row.state, row.error = "failed", str(outcome.get("message"))
            else:
                row.state = "interrupted"
                row.error = f"The training process ended without finishing (exit code {code})."
                tail = _tail(run.folder / "worker.log")
                if tail:
                    row.log = (row.log + "\n" + tail)[-LOG_CHARS:]
            finished = row
        with self._cv:
            self._running.pop(job_id, None)
            self._cv.notify_all()
        self._cpus_changed()
        if finished.state == "done" and self.on_done:
            try:
                self.on_done(finished)
            except Exception:  # noqa: BLE001 - the job's files stay; the model is registered at next start
                log.exception("Registering the model of job %s failed", job_id)

    def _images(self, job: Job, paths: list[Path]) -> None:
        if self.on_images and paths:
            try:
                self.on_images(job, paths)
            except Exception:  # noqa: BLE001 - the job's outputs stay as they are
                log.exception("Publishing the images of job %s failed", job.id)

    def _terminate(self, process: subprocess.Popen[bytes], wait_s: float = 5.0) -> None:
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass

    def _wait_finished(self, owner: str, job_id: str, timeout_s: float = 60.0) -> Job:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(owner, job_id)
            with self._cv:
                following = job_id in self._running
            if job.state in FINISHED and not following:
                return job
            time.sleep(0.1)
        return self.get(owner, job_id)


def _read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events, offset + end


def _tail(path: Path, chars: int = 2_000) -> str:
    try:
        return path.read_bytes()[-chars:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def check_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise InvalidOptionsError("Give the model a name (it appears in your model list).")
    if len(name) > 80 or "/" in name or "\\" in name:
        raise InvalidOptionsError("The model name may have at most 80 characters and no slashes.")
    return name
