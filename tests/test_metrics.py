"""Automatic metrics: hand-checkable values on fixed inputs, storage with versions, stop, history."""

from __future__ import annotations

import math
import threading

import pytest
from sacrebleu.metrics import BLEU

from generators.base import GenerationFailedError
from webui.services import metrics


def test_bleu_and_rouge_on_fixed_inputs_match_hand_computed_values() -> None:
    from rouge_score import rouge_scorer

    # identical sentences: BLEU 100, ROUGE-L 1; disjoint: 0 and 0
    assert BLEU().corpus_score(["the cat sat on the mat"], [["the cat sat on the mat"]]).score == pytest.approx(100)
    assert BLEU().corpus_score(["dogs bark loudly"], [["the cat sat on the mat"]]).score == pytest.approx(0)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # LCS("a b c d", "a c d e") = "a c d" (3): precision 3/4, recall 3/4, F1 0.75
    assert scorer.score("a b c d", "a c d e")["rougeL"].fmeasure == pytest.approx(0.75)


def test_log_likelihood_in_windows_scores_each_token_once_with_its_windows_context(tiny_model_dir) -> None:
    import torch

    from generators.text.transformers_lm import TransformersLM, scoring_windows

    window = 64
    lm = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "context_length": window})
    lm.load()

    def ids_of(text: str) -> list[int]:
        return [lm.tokenizer.bos_token_id, *lm.tokenizer.encode(text, add_special_tokens=False)]

    def next_token_nll(context: list[int], token: int) -> float:
        with torch.inference_mode():
            logits = lm.model(input_ids=torch.tensor([context])).logits[0, -1].float()
        return -torch.log_softmax(logits, -1)[token].item()

    # a text of several windows: every token after the first counted once, predicted from the part of the
    # text its window holds (each token scored here by a forward of its own)
    text = "The lighthouse keeper walked down to the harbour before dawn. " * 12
    ids = ids_of(text)
    assert len(ids) > 2 * window
    nll, tokens = lm.log_likelihood(text)
    assert tokens == len(ids) - 1
    expected = sum(next_token_nll(ids[start:p], ids[p]) for start, end, first_new in scoring_windows(len(ids), window)
                   for p in range(start + 1 + first_new, end))
    assert nll == pytest.approx(expected, rel=1e-4)
    assert 1 < math.exp(nll / tokens) < 2 * len(lm.tokenizer)  # a random model is near uniform, not worse

    # a text that fits one window: the plain one-pass sum
    short = "The lighthouse keeper walked down to the harbour before dawn."
    ids = ids_of(short)
    assert len(ids) <= window
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    direct = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    assert lm.log_likelihood(short) == (pytest.approx(direct, rel=1e-4), len(ids) - 1)


def test_run_stores_values_with_versions_and_history(make_ctx) -> None:
    ctx = make_ctx({"quick": {"words": 3}}, images=True)
    ctx.registry.remove("vae-mnist32")
    ctx.registry.remove("diffusion-mnist32")
    seen: list[float] = []
    found = metrics.run(ctx, None, lambda f, _m: seen.append(f))
    by = {(m.generator, m.metric): m.value for m in found}
    assert set(by) == {("quick", "bleu"), ("quick", "rouge_l"), ("gan-mnist32", "class_accuracy"), ("gan-mnist32", "frechet")}
    assert by[("gan-mnist32", "class_accuracy")] > 0.95 and 0 < by[("gan-mnist32", "frechet")] < 60
    assert 0 <= by[("quick", "bleu")] <= 100 and seen[-1] == 1.0 and seen == sorted(seen)
    from sqlalchemy import select

    from storage.models import MetricResult

    with ctx.store.begin() as s:
        rows = list(s.scalars(select(MetricResult)))
        assert len(rows) == 4 and all("torch" in r.details and r.details["plugin"] for r in rows)
    metrics.run(ctx, ["quick"])
    assert len([m for m in metrics.history(ctx, "quick") if m.metric == "bleu"]) == 2
    assert len(metrics.latest(ctx)) == 4


def test_a_run_can_be_stopped_and_unknown_models_are_refused(make_ctx) -> None:
    ctx = make_ctx({"quick": {"words": 3}})
    stop = threading.Event()
    stop.set()
    with pytest.raises(GenerationFailedError, match="stopped"):
        metrics.run(ctx, ["quick"], cancel=stop)
    with pytest.raises(Exception, match="Unknown model"):
        metrics.run(ctx, ["nope"])
