"""One training job in a process of its own: ``python -m generators.training.worker SPEC.json``.

The job runner starts this process so a training run never shares the app's OpenMP team (the compute
lane keeps serving generation on the other cores), can be stopped at once (the process is terminated;
the last checkpoint stays), and dies with the app (PR_SET_PDEATHSIG), leaving its job `running` in the
database for the next start to mark `interrupted` and resume from the checkpoint on request.

The spec (JSON) names the family (`kind`: lora | gan | vae | diffusion | lstm), the data, the run
folder (`out`), the parameters and `resume`. Progress goes to OUT/events.jsonl, one JSON object a line:
`step` (loss values), `epoch` (held-out figures, sample grid), `log`, and at the end `done` (the figures
and what to load) or `error` (a message for a person). The runner reads that file; this module knows
nothing of the database or the web app.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
IMAGE_KINDS = ("gan", "vae", "diffusion")


class Events:
    """Appends events to OUT/events.jsonl (flushed per line: the runner tails it)."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the job

    def __call__(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        self._f.write(json.dumps(event, default=float) + "\n")
        self._f.flush()


def die_with_parent() -> None:
    """Linux: SIGKILL this process when the app that started it dies (a kill -9 of the app included)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    parent = os.environ.get("AIGC_JOB_PARENT")
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(3)


def run_lora(spec: dict[str, Any], report: Any) -> dict[str, Any]:
    from .lora import ADAPTER_DIR, LoraOptions, fine_tune

    params = spec["params"]
    fields = set(LoraOptions.__dataclass_fields__)
    options = LoraOptions(**{k: v for k, v in params.items() if k in fields})
    base_dir = spec.get("base_dir") or base_folder(spec["base_source"], spec.get("cache_dir"), report)
    figures = fine_tune(base_dir, spec["data"], spec["data_kind"], spec["out"], options, report,
                        resume=spec.get("resume", False))
    adapter = str(Path(spec["out"]) / ADAPTER_DIR)
    return {"figures": figures, "plugin": "transformers",
            "options": {"source": spec["base_source"], "adapter": adapter}}


def as_function(report: Any) -> Any:
    """A plain function (the training options are deep-copied; a function is copied as itself)."""

    def callback(event: dict[str, Any]) -> None:
        report(event)

    return callback


def base_folder(source: str, cache_dir: str | None, report: Any) -> str:
    """The transformers folder of a model source (a GGUF is converted once into the shared cache)."""
    from ..text.model_source import ensure_gguf_cache, resolve_source

    src = resolve_source(source)
    if not src.is_gguf:
        return src.location
    if not cache_dir:
        raise ValueError("A GGUF base model needs the model cache folder.")

    def progress(message: str) -> None:
        report({"type": "log", "message": message})

    return str(ensure_gguf_cache(src.gguf_path(cache_dir, progress), cache_dir, progress))


def run_image(spec: dict[str, Any], report: Any) -> dict[str, Any]:
    from ..image.train import TrainOptions, train

    params = dict(spec["params"])
    overrides = {k: str(v) for k, v in params.get("overrides", {}).items()}
    options = TrainOptions(model=spec["kind"], data=spec["data"], size=int(params.get("size", 32)),
                           epochs=int(params.get("epochs", 5)), out=Path(spec["out"]),
                           batch_size=int(params.get("batch_size", 64)), seed=int(params.get("seed", 0)),
                           device=params.get("device", "auto"), resume=spec.get("resume", False),
                           overrides=overrides, progress=False, callback=as_function(report))
    result = train(options)
    figures: dict[str, Any] = {k: v for k, v in result.last.items() if isinstance(v, int | float)}
    if spec["data"] == "mnist5k" and spec["kind"] in ("gan", "vae"):
        figures.update(digit_figures(spec["kind"], Path(spec["out"]), report))
    return {"figures": figures, "plugin": "digit-diffusion" if spec["kind"] == "diffusion" else spec["kind"],
            "options": {"weights": str(Path(spec["out"]))}}


def digit_figures(kind: str, out: Path, report: Any, n: int = 200) -> dict[str, float]:
    """Classifier accuracy and Fréchet distance of generated digits (the shipped classifier's features)."""
    from ..image.evaluate import evaluate

    report({"type": "log", "message": f"evaluating {n} generated digits with the shipped classifier…"})
    classifier = Path(__file__).resolve().parent.parent / "image" / "weights" / "classifier-mnist32"
    rows = evaluate(out if kind == "gan" else None, out if kind == "vae" else None, classifier, n=n, iwae_k=10)
    figures = {}
    for row in rows:
        if row.model.lower() != kind:
            continue
        if row.metric.startswith("accuracy"):
            figures["digit_accuracy"] = row.value
        elif row.metric.startswith("FD"):
            figures["frechet_distance"] = row.value
        elif row.metric.startswith("-ELBO"):
            figures["neg_elbo_nats"] = row.value
    return figures


def run_lstm(spec: dict[str, Any], report: Any) -> dict[str, Any]:
    from ..text.train_rnn import TrainOptions, train

    params = spec["params"]
    fields = set(TrainOptions.__dataclass_fields__) - {"text", "out", "resume", "progress", "callback"}
    options = TrainOptions(text=Path(spec["data"]), out=Path(spec["out"]), resume=spec.get("resume", False),
                           progress=False, callback=as_function(report), **{k: v for k, v in params.items() if k in fields})
    result = train(options)
    figures = {"val_bpc": result.last.get("val_bpc"), "train_bpc": result.last.get("train_bpc"),
               "train_seconds": round(result.train_seconds, 1)}
    return {"figures": figures, "plugin": "char-lstm", "options": {"weights": str(Path(spec["out"]))}}


RUNNERS = {"lora": run_lora, "gan": run_image, "vae": run_image, "diffusion": run_image, "lstm": run_lstm}


def run(spec: dict[str, Any]) -> int:
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    report = Events(out / EVENTS)
    import torch

    torch.set_num_threads(int(spec.get("threads") or 1))
    try:
        result = RUNNERS[spec["kind"]](spec, report)
    except (ValueError, FileNotFoundError, OSError) as exc:
        report({"type": "error", "message": str(exc)})
        return 2
    except Exception as exc:  # noqa: BLE001 - reported to the person, with the trace in the log
        report({"type": "log", "message": traceback.format_exc(limit=6)})
        report({"type": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 2
    report({"type": "done", **result})
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent()
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    raise SystemExit(run(spec))


if __name__ == "__main__":
    main()
