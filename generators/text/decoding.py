"""Pieces of a token-by-token decoding loop: sampling, detokenizing, stop strings.

Kept apart from the plugin so each is tested alone and the batched scheduler can reuse them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from ..base import SamplingParams
from .logits_processing import (
    DryPenalty,
    ExcludeTopChoices,
    LogitBias,
    PresenceFrequencyPenalty,
    ScoredToken,
    score_token,
)


def last_token_ids(tokenizer: Any, texts: Sequence[str]) -> set[int]:
    """The token each text ends with when it follows a letter (how text-generation-webui maps DRY's
    sequence breakers to tokens)."""
    if tokenizer is None:
        return set()
    ids = set()
    for text in texts:
        encoded = tokenizer.encode("a" + text, add_special_tokens=False)
        if encoded:
            ids.add(int(encoded[-1]))
    return ids


class Sampler:
    """Picks the next token from logits with the request's sampling parameters.

    Uses transformers' own logits processors, in the order `generate()` applies them, so a
    given seed and setting behave as users of transformers expect.
    """

    def __init__(self, params: SamplingParams, seed: int, device: Any, prompt_len: int = 0,
                 logprobs: int | None = None, tokenizer: Any = None, eos_ids: Sequence[int] = ()) -> None:
        """`prompt_len`: where generated tokens start in the ids it is given (the OpenAI penalties count
        those only); `logprobs`: None, or record each token's log-probability and that many alternatives
        in `scored` (read by the plugin as the tokens are relayed); `tokenizer` maps DRY's sequence breakers
        to tokens and, with `eos_ids`, names the tokens XTC never removes (end of text, newline).

        The order is text-generation-webui's — penalties, then temperature and the truncation samplers, XTC
        last — after OpenAI's logit bias, which applies to the model's own logits."""
        import torch
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
            TypicalLogitsWarper,
        )

        # Sampling draws from a CPU generator so a seed gives the same tokens on any device.
        self.rng = torch.Generator(device="cpu").manual_seed(seed)
        self.greedy = params.temperature == 0.0
        procs: list[Any] = []
        if params.logit_bias:
            procs.append(LogitBias(params.logit_bias))
        if params.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.presence_penalty or params.frequency_penalty:
            procs.append(PresenceFrequencyPenalty(params.presence_penalty, params.frequency_penalty, prompt_len))
        if params.dry_multiplier > 0.0:
            procs.append(DryPenalty(params.dry_multiplier, params.dry_base, params.dry_allowed_length,
                                    last_token_ids(tokenizer, params.dry_sequence_breakers)))
        if not self.greedy:
            if params.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                procs.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                procs.append(TopPLogitsWarper(params.top_p))
            if params.typical_p < 1.0:
                procs.append(TypicalLogitsWarper(params.typical_p))
            if params.min_p > 0.0:
                procs.append(MinPLogitsWarper(params.min_p))
            if params.xtc_probability > 0.0:
                protected = {*eos_ids, *last_token_ids(tokenizer, ["\n"])}
                procs.append(ExcludeTopChoices(params.xtc_threshold, params.xtc_probability, self.rng, protected))
        self.processors = LogitsProcessorList(procs)
        self.logprobs = logprobs
        self.scored: deque[ScoredToken] = deque()  # appended on the compute lane, taken by the relaying thread
        # the argmax alone decides (the batcher takes it for all rows at once)
        self.plain_greedy = self.greedy and not procs and logprobs is None
        self._torch = torch

    def __call__(self, input_ids: Any, logits: Any) -> int:
        """input_ids: (1, T) tokens so far; logits: (1, V) for the next position."""
        torch = self._torch
        scores = self.processors(input_ids, logits) if self.processors else logits
        if self.greedy:
            token = int(scores.max(dim=-1).indices.item())  # the first maximal index, as argmax, and cheaper on CPU
        else:
            probs = torch.softmax(scores.float(), dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=self.rng).item())
        if self.logprobs is not None:
            self.scored.append(score_token(logits, token, self.logprobs))
        return token

    def take_scored(self) -> list[ScoredToken]:
        """The tokens scored since the last call (thread-safe against the sampling thread)."""
        out = []
        while self.scored:
            out.append(self.scored.popleft())
        return out


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without re-decoding everything.

    Same approach as TGI/vLLM: decode a short window, and hold back while the window ends in
    an incomplete UTF-8 sequence (U+FFFD) so multi-byte characters are never split.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""


class StopStringFilter:
    """Holds back text that might be the start of a stop string; reports when one appears."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""
        self.stopped = False

    def push(self, delta: str) -> str:
        """Return the text that is safe to show now."""
        if not self.stops:
            return delta
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[: min(hits)], ""
            return out
        hold = 0
        for s in self.stops:  # longest suffix of pending that is a prefix of a stop string
            for n in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
