"""Log-likelihood of a text under a causal LM, for perplexity and bits per character."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from ...base import GenerationFailedError, InvalidOptionsError, TokenLogprob
from ...compute import lane
from ..logits_processing import score_prompt


def scoring_windows(length: int, window: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first_new) windows over `length` tokens for perplexity: each window overlaps the
    previous by half, so every scored token sees at least half a window of context; `first_new` is
    the first position of the window's predictions (tokens[start + 1:end]) not scored before.
    tokens[0] is never predicted."""
    done, start = 1, 0
    while done < length:
        end = min(length, start + window)
        yield start, end, done - start - 1
        done = end
        start = max(start + window // 2, end - window // 2) if end < length else end


def log_likelihood(model: Any, tokenizer: Any, text: str, context_window: int,
                   cancel: threading.Event | None = None) -> tuple[float, int]:
    """NLL (nats) of every token of `text` after the first, and how many tokens were scored: in windows
    of the context size (at most 1,024) with half-window overlap, one window per compute-lane job so
    streams go on between them."""
    import torch

    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids = [bos, *ids]
    if len(ids) < 2:
        raise InvalidOptionsError("The text is too short to score.")
    window = max(8, min(context_window, 1024))

    def score(start: int, end: int, first_new: int) -> tuple[float, int]:
        chunk = torch.tensor([ids[start:end]], device=model.device)
        with torch.inference_mode():
            logits = model(input_ids=chunk).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")[first_new:]
        return float(nll.sum()), int(nll.numel())

    total, scored = 0.0, 0
    for start, end, first_new in scoring_windows(len(ids), window):
        if cancel is not None and cancel.is_set():
            raise GenerationFailedError("Scoring was stopped.")
        nll_sum, n = lane().call(score, start, end, first_new)
        total += nll_sum
        scored += n
    return total, scored


def prompt_logprobs(model: Any, tokenizer: Any, text: str, top: int, context_window: int,
                    name: str) -> list[TokenLogprob]:
    """Every token of `text` scored by one forward pass on the compute lane (after the start-of-text token
    where the model has one, so the first token gets a log-probability too); special tokens are left out."""
    import torch

    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if bos is not None:  # as log_likelihood scores: the first token is predicted from the start of text
        ids = [bos, *ids]
    if len(ids) > context_window:
        raise InvalidOptionsError(f"The prompt is {len(ids)} tokens long; {name} scores at most "
                                  f"{context_window} at once.")

    def forward() -> list[Any]:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
            return score_prompt(logits, ids, top)

    scored = lane().call(forward)
    decode = tokenizer.decode
    special = set(tokenizer.all_special_ids)
    return [TokenLogprob(decode([i]), None if st is None else st.logprob,
                         () if st is None else tuple((decode([k]), lp) for k, lp in st.top))
            for i, st in zip(ids, scored, strict=True) if i not in special]
