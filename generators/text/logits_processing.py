"""Logits processing the OpenAI API defines, beside transformers' own processors: presence and frequency
penalties, and the log-probabilities reported back (`logprobs` / `top_logprobs`).

Both work on one row of logits (1, V), so the batched scheduler and the single-stream loop share them
through `decoding.Sampler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class PresenceFrequencyPenalty:
    """OpenAI's penalties: logit[j] -= count[j] * frequency + (count[j] > 0) * presence, where count[j]
    is how often token j was generated so far (the prompt does not count). transformers has no such
    processor (its repetition penalty is multiplicative and counts the prompt)."""

    def __init__(self, presence: float, frequency: float, prompt_len: int) -> None:
        self.presence = presence
        self.frequency = frequency
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """input_ids: (1, T) prompt + generated; scores: (1, V)."""
        import torch

        generated = input_ids[:, self.prompt_len:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device)
        counts.scatter_add_(1, generated, torch.ones(generated.shape, dtype=torch.float32, device=scores.device))
        penalty = counts * self.frequency + (counts > 0).float() * self.presence
        return (scores.float() - penalty).to(scores.dtype)


@dataclass(frozen=True)
class ScoredToken:
    """A sampled token's id, its log-probability and the k likeliest (id, log-probability), best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def score_token(logits: Any, token_id: int, top: int) -> ScoredToken:
    """The model's own log-probabilities (log-softmax of the raw logits, before penalties and temperature,
    as vLLM reports them) for the chosen token and the `top` likeliest ones."""
    import torch

    logprobs = torch.log_softmax(logits[0].float(), dim=-1)  # (V,)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = logprobs.topk(top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return ScoredToken(token_id, float(logprobs[token_id]), best)


def score_prompt(logits: Any, ids: list[int], top: int) -> list[ScoredToken | None]:
    """Per prompt position: how the model scored the token there given the ones before (None for the first).
    logits: (T, V) of one forward pass over `ids`."""
    import torch

    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)  # position t predicts ids[t + 1]
    target = torch.tensor(ids[1:], device=logprobs.device)
    chosen = logprobs.gather(1, target[:, None])[:, 0].tolist()
    tops = logprobs.topk(top, dim=-1) if top else None
    out: list[ScoredToken | None] = [None]
    for t, value in enumerate(chosen):
        best = tuple(zip(tops.indices[t].tolist(), tops.values[t].tolist(), strict=True)) if tops is not None else ()
        out.append(ScoredToken(ids[t + 1], value, best))
    return out
