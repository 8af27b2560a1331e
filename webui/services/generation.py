"""Run one text generation: record it, stream it, save partial text as it grows.

Shared by chat turns, the HTTP API (and story continuations): every call becomes a
`generations` row with its parameters, seed, timings, token counts and outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from generators.base import (
    GenerationFailedError,
    InvalidOptionsError,
    SamplingParams,
    StudioError,
    TextChunk,
    TextGenerator,
    TextRequest,
    TokenLogprob,
    validate_model,
)
from storage import repository as repo

from .context import AppContext

log = logging.getLogger(__name__)

SAVE_EVERY_S = 0.5  # partial text reaches the database at least this often while streaming

OUTCOME_BY_FINISH = {"stop": "ok", "length": "ok", "cancelled": "cancelled"}


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.OutOfMemoryError (CUDA) and friends, without importing torch."""
    return isinstance(exc, MemoryError) or type(exc).__name__ in ("OutOfMemoryError", "OutOfResources")


def out_of_memory_message(ctx: AppContext, model: str, exc: BaseException) -> str:
    """Unload the model (it may hold half-allocated buffers) so the next request reloads it cleanly."""
    log.error("%s ran out of memory: %s", model, exc)
    try:
        ctx.registry.unload(model)
        how = "It was unloaded and will load again on the next request"
    except StudioError:  # someone else is generating with it right now
        how = "It stays loaded because another request is using it"
    return (f"{model} ran out of memory ({exc}). {how}; try fewer tokens, a smaller batch, "
            "4-bit quantization or a smaller model.")


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
    if count_request:
        ctx.check_rate(owner)
    params_json = request.params.model_dump(mode="json")
    if preset:
        params_json["preset"] = preset
    with ctx.store.begin() as s:
        gen_row = repo.start_generation(
            s, owner, model, params_json, session_id=session_id, source=source, seed=request.params.seed,
            instance_id=ctx.store.instance_id,
        )
    result = RunResult(generation_id=gen_row.id)
    if on_start:
        on_start(gen_row.id)
    last_save = time.monotonic()
    final: TextChunk | None = None
    try:
        with ctx.registry.use(model, progress, owner=owner) as gen:
            if not isinstance(gen, TextGenerator):
                raise InvalidOptionsError(f"{model!r} is not a text model; pick a language model.")
            for chunk in gen.stream(request, cancel):
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
    except BaseException as exc:  # record every failure, then let the edge translate it
        error = exc if isinstance(exc, StudioError) else GenerationFailedError(f"Generation failed: {exc}")
        if is_out_of_memory(exc):
            error = GenerationFailedError(out_of_memory_message(ctx, model, exc))
        outcome = "cancelled" if isinstance(exc, GeneratorExit) else "error"
        if not isinstance(exc, (StudioError, GeneratorExit)):
            log.exception("Generation with %s failed", model)
        result.outcome = outcome
        if save:
            save(result.text, outcome)
        with ctx.store.begin() as s:
            repo.finish_generation(s, gen_row.id, outcome, error=None if outcome == "cancelled" else str(error))
        if isinstance(exc, (StudioError, GeneratorExit, KeyboardInterrupt)):
            raise
        raise error from exc
    assert final is not None and final.stats is not None, "a text stream must end with a finish chunk"
    stats = final.stats
    result.finish_reason = final.finish_reason
    result.outcome = OUTCOME_BY_FINISH[final.finish_reason or "stop"]
    result.dropped_messages = stats.dropped_messages
    result.prompt_tokens = stats.prompt_tokens
    result.completion_tokens = stats.completion_tokens
    if save:
        save(result.text, result.outcome)
    with ctx.store.begin() as s:
        repo.finish_generation(
            s,
            gen_row.id,
            result.outcome,
            seed=stats.seed,
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            time_to_first_token_s=stats.time_to_first_token_s,
            tokens_per_s=stats.tokens_per_s,
        )
    yield "", result
