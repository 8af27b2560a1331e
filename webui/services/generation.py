"""Run one text generation: record it, stream it, save partial text as it grows.

Shared by chat turns, story continuations, the arena and the HTTP API: every call becomes a
`generations` row (through `recording.recorded_generation`) with its parameters, seed, timings,
token counts and outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from generators.base import (
    GenerationFailedError,
    SamplingParams,
    TextChunk,
    TextRequest,
    TokenLogprob,
    validate_model,
)

from .context import AppContext
from .recording import recorded_generation

SAVE_EVERY_S = 0.5  # partial text reaches the database at least this often while streaming

OUTCOME_BY_FINISH = {"stop": "ok", "length": "ok", "cancelled": "cancelled"}


def sampling_params(values: dict[str, Any] | SamplingParams | None, ctx: AppContext | None = None) -> SamplingParams:
    """Validate sampling parameters (raises InvalidOptionsError with a readable message);
    with `ctx`, also this studio's max_new_tokens limit."""
    if isinstance(values, SamplingParams):
        params = values
    else:
        params = validate_model(SamplingParams, {k: v for k, v in (values or {}).items() if v is not None}, "parameter")
    if ctx is not None:
        ctx.check_max_new_tokens(params.max_new_tokens)
    return params


@dataclass
class RunResult:
    text: str = ""
    finish_reason: str | None = None
    outcome: str = "running"
    generation_id: str = ""
    dropped_messages: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # when the request asked for them


def stream_text(
    ctx: AppContext,
    owner: str,
    model: str,
    request: TextRequest,
    *,
    cancel: threading.Event | None = None,
    session_id: str | None = None,
    source: str = "ui",
    on_start: Callable[[str], None] | None = None,
    save: Callable[[str, str | None], None] | None = None,
    progress: Callable[[str], None] | None = None,
    count_request: bool = True,
    preset: str | None = None,
) -> Iterator[tuple[str, RunResult]]:
    """Yield (delta, result-so-far). `save(text, status)` persists the partial text: called at
    least every SAVE_EVERY_S while streaming and once at the end with the final status.
    `count_request=False`: another choice of the same API request already counted against the rate limit.
    `preset`: the sampler preset the parameters started from, kept in the record beside them."""
    ctx.check_max_new_tokens(request.params.max_new_tokens)  # limits hold for every caller
    params_json = request.params.model_dump(mode="json")
    if preset:
        params_json["preset"] = preset
    result = RunResult()

    def settle(outcome: str) -> None:
        result.outcome = outcome
        if save:
            save(result.text, result.outcome)

    def started(generation_id: str) -> None:
        result.generation_id = generation_id
        if on_start:
            on_start(generation_id)

    last_save = time.monotonic()
    final: TextChunk | None = None
    with recorded_generation(ctx, owner, model, params_json, modality="text", seed=request.params.seed,
                             source=source, session_id=session_id, progress=progress, count_request=count_request,
                             on_start=started, on_end=settle) as recording:
        for chunk in recording.generator.stream(request, cancel):
            if chunk.logprobs:
                result.logprobs.extend(chunk.logprobs)
            if chunk.text:
                result.text += chunk.text
                yield chunk.text, result
            if chunk.finish_reason:
                final = chunk
            if save and time.monotonic() - last_save >= SAVE_EVERY_S:
                save(result.text, None)
                last_save = time.monotonic()
        if final is None or final.stats is None:
            raise GenerationFailedError(f"{model} ended its reply without a finish chunk and its stats.")
        stats = final.stats
        result.finish_reason = final.finish_reason
        result.outcome = recording.outcome = OUTCOME_BY_FINISH[final.finish_reason or "stop"]
        result.dropped_messages = stats.dropped_messages
        result.prompt_tokens = stats.prompt_tokens
        result.completion_tokens = stats.completion_tokens
        recording.fields = {"seed": stats.seed, "prompt_tokens": stats.prompt_tokens,
                            "completion_tokens": stats.completion_tokens,
                            "time_to_first_token_s": stats.time_to_first_token_s, "tokens_per_s": stats.tokens_per_s}
    yield "", result
