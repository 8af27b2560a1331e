"""Logits processing beside transformers' own processors: OpenAI's presence and frequency penalties, the
samplers local-model users reach for that transformers lacks (DRY, XTC), and the log-probabilities reported
back (`logprobs` / `top_logprobs`).

All work on one row of logits (1, V), so the batched scheduler and the single-stream loop share them
through `decoding.Sampler`: each sequence of a batch has its own sampler, state and random generator.
"""

from __future__ import annotations

from collections.abc import Collection
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


class DryPenalty:
    """DRY ("don't repeat yourself", as text-generation-webui and koboldcpp define it): when the context ends
    with a sequence that already occurred, the token that followed it then would extend the repeat; its logit
    loses multiplier * base ** (match_length - allowed_length) when the match is at least allowed_length
    tokens long. A sequence breaker token (newline, colon, quote, asterisk by default) ends a match, so
    names and formatting may repeat. The whole context counts (prompt included), like those tools."""

    MAX_MATCH = 50  # longer matches are rare and would overflow the exponent

    def __init__(self, multiplier: float, base: float, allowed_length: int, breaker_ids: Collection[int]) -> None:
        self.multiplier = multiplier
        self.base = base
        self.allowed_length = allowed_length
        self.breakers = frozenset(breaker_ids)

    def match_lengths(self, ids: list[int]) -> dict[int, int]:
        """Token that would extend a repeat → the longest repeated sequence it would extend."""
        last = ids[-1]
        if last in self.breakers:
            return {}
        lengths: dict[int, int] = {}
        for i in range(len(ids) - 1):  # every earlier place the last token occurred (not the last one itself)
            if ids[i] != last or ids[i + 1] in self.breakers:
                continue
            length = 1
            while length < self.MAX_MATCH:  # extend the match backwards
                j = i - length
                before = ids[-(length + 1)]
                if j < 0 or ids[j] != before or before in self.breakers:
                    break
                length += 1
            following = ids[i + 1]
            lengths[following] = max(length, lengths.get(following, 0))
        return lengths

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """input_ids: (1, T) prompt + generated; scores: (1, V)."""
        ids = input_ids[0].tolist()
        if len(ids) < 2:
            return scores
        penalties = {t: self.multiplier * self.base ** (n - self.allowed_length)
                     for t, n in self.match_lengths(ids).items() if n >= self.allowed_length and t < scores.shape[-1]}
        if not penalties:
            return scores
        scores = scores.clone()
        for token, penalty in penalties.items():
            scores[0, token] -= penalty
        return scores


class ExcludeTopChoices:
    """XTC (exclude top choices, as text-generation-webui and koboldcpp define it): with the given
    probability, every token at least `threshold` likely is removed except the least likely of them, so the
    reply takes a less obvious path while staying among plausible tokens. When fewer than two tokens reach
    the threshold nothing changes; neither does it when a protected token (end of text, newline) would be
    removed, so replies still end. The coin is drawn from the sequence's own seeded generator."""

    def __init__(self, threshold: float, probability: float, rng: Any, protected_ids: Collection[int] = ()) -> None:
        self.threshold = threshold
        self.probability = probability
        self.rng = rng
        self.protected = sorted(set(protected_ids))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if float(torch.rand(1, generator=self.rng)) >= self.probability:
            return scores
        probs = torch.softmax(scores.float(), dim=-1)
        above = probs >= self.threshold  # (1, V)
        if int(above.sum()) < 2:
            return scores
        # keep the least likely of the tokens above the threshold
        least = torch.where(above, probs, torch.full_like(probs, 2.0)).argmin(dim=-1, keepdim=True)
        remove = above.scatter(1, least, False)
        protected = [t for t in self.protected if t < scores.shape[-1]]
        if protected and bool(remove[0, protected].any()):
            return scores
        return scores.masked_fill(remove, float("-inf"))


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
