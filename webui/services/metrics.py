"""Automatic metrics, stored with the date and versions, for the Evaluate tab and the command line.

Text generators:
- perplexity (per the model's own token) and bits per character on a held-out text shipped with
  the project (`webui/evaluation/heldout.txt`, written for it, so no model has trained on it);
  bits per character makes models with different tokenizers (or characters) comparable;
- BLEU (sacrebleu, corpus level) and ROUGE-L F1 (rouge-score) of greedy answers to a small prompt
  set with references (`webui/evaluation/prompts.json`).
Image generators (10-class 32 px digit models): classifier accuracy of generated digits for the
requested class and the Fréchet distance to the held-out digits, as the image evaluation command
computes them (fewer images here, so expect more noise than in the model card).

    python launch.py evaluate [--models a,b] [--data-dir DIR]

A person's own models (finished training jobs) are measured like the shared ones when their owner asks;
their results carry the owner (`details.owner`) and are shown to that owner only.
"""

from __future__ import annotations

import json
import math
import platform
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from generators.base import ChatMessage, GenerationFailedError, ImageGenerator, InvalidOptionsError, TextGenerator, TextRequest
from generators.compute import lane
from storage.models import MetricResult, new_id

from .context import AppContext
from .generation import sampling_params
from .own_models import shown_to

HERE = Path(__file__).resolve().parent.parent / "evaluation"
HELDOUT = HERE / "heldout.txt"
PROMPTS = HERE / "prompts.json"
IMAGE_SAMPLES = 500  # generated digits per image model (50 per class)

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Measured:
    generator: str
    metric: str
    value: float
    dataset: str
    created_at: str = ""


def _versions(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    import sys
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("aigc-studio", "torch", "transformers", "sacrebleu", "rouge-score"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"python": sys.version.split()[0], "machine": platform.machine(), **found, **(extra or {})}


def _stopped(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise GenerationFailedError("The evaluation was stopped; results measured so far are kept.")


def text_metrics(gen: TextGenerator, progress: Progress, cancel: threading.Event | None) -> list[tuple[str, float, str]]:
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    out: list[tuple[str, float, str]] = []
    heldout = HELDOUT.read_text(encoding="utf-8")
    try:
        progress(0.05, f"{gen.name}: scoring the held-out text")
        nll, tokens = gen.log_likelihood(heldout, cancel)
        out.append(("perplexity", math.exp(nll / tokens), f"{HELDOUT.name} ({tokens} tokens)"))
        out.append(("bits_per_char", nll / math.log(2) / len(heldout), f"{HELDOUT.name} ({len(heldout)} chars)"))
    except InvalidOptionsError:
        pass  # a generator that cannot score text still gets BLEU/ROUGE
    items = json.loads(PROMPTS.read_text(encoding="utf-8"))["items"]
    params = sampling_params({"temperature": 0.0, "max_new_tokens": 48, "seed": 0})
    answers = []
    for i, item in enumerate(items):
        _stopped(cancel)
        progress(0.1 + 0.85 * i / len(items), f"{gen.name}: prompt {i + 1} of {len(items)}")
        request = (TextRequest(messages=(ChatMessage("user", item["prompt"]),), params=params) if gen.supports_chat()
                   else TextRequest(prompt=item["prompt"] + "\n", params=params))
        text, _ = gen.generate(request, cancel)
        answers.append(text.strip().split("\n")[0])
    references = [item["reference"] for item in items]
    out.append(("bleu", BLEU().corpus_score(answers, [references]).score, f"{PROMPTS.name} ({len(items)} prompts)"))
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = sum(scorer.score(r, a)["rougeL"].fmeasure for r, a in zip(references, answers, strict=True)) / len(items)
    out.append(("rouge_l", 100 * rouge, f"{PROMPTS.name} ({len(items)} prompts)"))
    return out


def image_metrics(gen: ImageGenerator, progress: Progress, cancel: threading.Event | None) -> list[tuple[str, float, str]]:
    import torch

    from generators.base import ImageEnd
    from generators.image.checkpoint import load_model
    from generators.image.data import load_mnist5k
    from generators.image.evaluate import accuracy_and_features, balanced_labels, frechet_distance
    from generators.image.plugin import WEIGHTS_DIR

    if gen.image_size != (32, 32, 1) or len(gen.class_names) != 10:
        raise InvalidOptionsError(f"{gen.name}: the image metrics need a 10-class 32 px grayscale digit model.")
    def reference() -> tuple[Any, Any]:
        classifier = load_model(WEIGHTS_DIR / "classifier-mnist32").model
        held_out = load_mnist5k(32, "eval")
        return classifier, accuracy_and_features(classifier, held_out.images, held_out.labels)[1]

    classifier, real = lane().call(reference)  # the process's tensor work runs on one thread (generators.compute)
    labels = balanced_labels(IMAGE_SAMPLES, 10)
    pixels = []
    for start in range(0, IMAGE_SAMPLES, 100):
        _stopped(cancel)
        progress(0.1 + 0.8 * start / IMAGE_SAMPLES, f"{gen.name}: generating digits {start + 1}–{start + 100}")
        ends = [ImageEnd(int(labels[k]), k) for k in range(start, start + 100)]
        pixels.append(torch.from_numpy(gen.sample(ends, gen.info.params()).pixels))

    def measure() -> tuple[float, float]:
        images = torch.cat(pixels).permute(0, 3, 1, 2).float() / 255.0
        accuracy, features = accuracy_and_features(classifier, images, labels)
        return accuracy, frechet_distance(features, real)

    accuracy, frechet = lane().call(measure)
    dataset = f"mnist5k held-out (1,000) vs {IMAGE_SAMPLES} generated, seeds 0–{IMAGE_SAMPLES - 1}"
    return [("class_accuracy", accuracy, dataset), ("frechet", frechet, dataset)]


def run(ctx: AppContext, models: list[str] | None = None, progress: Progress | None = None,
        cancel: threading.Event | None = None, owner: str | None = None) -> list[Measured]:
    """Measure every selected generator (default: all shared ones and `owner`'s own), store each value as
    it is measured. `owner`'s own models may be named; other people's are unknown here."""
    progress = progress or (lambda _f, _m: None)
    visible = ctx.registry.names(owner=owner)
    names = models or visible
    unknown = [m for m in names if m not in visible]
    if unknown:
        raise InvalidOptionsError(f"Unknown model(s): {', '.join(unknown)}. Available: {', '.join(visible) or 'none'}.")
    run_id, results = new_id(), []
    for k, name in enumerate(names):
        _stopped(cancel)

        def step(fraction: float, message: str, k: int = k) -> None:
            progress((k + fraction) / len(names), message)

        with ctx.registry.use(name, owner=owner or "") as gen:
            if isinstance(gen, TextGenerator):
                measured = text_metrics(gen, step, cancel)
            elif isinstance(gen, ImageGenerator):
                measured = image_metrics(gen, step, cancel)
            else:
                continue
            details = _versions({"weights": getattr(gen, "weights_hash", None), "plugin": gen.info.plugin,
                                 "options": gen.options.model_dump(mode="json")})
            if ctx.registry.owner_of(name) is not None:
                details["owner"] = ctx.registry.owner_of(name)  # shown to that owner only
        with ctx.store.begin() as s:
            for metric, value, dataset in measured:
                s.add(MetricResult(run_id=run_id, generator=name, metric=metric, value=float(value), dataset=dataset,
                                   details=details))
        results += [Measured(name, metric, float(value), dataset) for metric, value, dataset in measured]
    progress(1.0, "done")
    return results


def history(ctx: AppContext, generator: str | None = None, viewer: str | None = None) -> list[Measured]:
    """Every stored measurement `viewer` may see (shared models, and their own), oldest first."""
    with ctx.store.begin() as s:
        stmt = select(MetricResult).order_by(MetricResult.created_at, MetricResult.id)
        if generator:
            stmt = stmt.where(MetricResult.generator == generator)
        rows = list(s.scalars(stmt))
    return [Measured(r.generator, r.metric, r.value, r.dataset, r.created_at.isoformat(timespec="seconds"))
            for r in rows if shown_to(ctx, r.generator, viewer, (r.details or {}).get("owner"))]


def latest(ctx: AppContext, viewer: str | None = None) -> list[Measured]:
    """The most recent value of each (generator, metric) `viewer` may see."""
    last: dict[tuple[str, str], Measured] = {}
    for m in history(ctx, viewer=viewer):
        last[(m.generator, m.metric)] = m
    return sorted(last.values(), key=lambda m: (m.generator, m.metric))
