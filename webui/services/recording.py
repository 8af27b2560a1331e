"""The lifecycle every generation goes through, written once for chat, story, arena, the API and images.

`recorded_generation` starts a `generations` row, holds the model for the body (`Registry.use`: loaded,
not unloaded meanwhile) and finishes the row with the outcome: `ok` (or what the body set), `cancelled`
when the body stops on a cancel (`GenerationCancelledError`, or a consumer that closes a stream), `error`
with the message a person reads otherwise. An out-of-memory failure unloads the model so the next request
loads it cleanly. The exception then goes on to the edge, which translates it (a `StudioError` as it is,
anything else wrapped as a `GenerationFailedError`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from generators.base import (
    GenerationCancelledError,
    GenerationFailedError,
    Generator,
    InvalidOptionsError,
    Modality,
    OutOfMemoryError,
    ProgressFn,
    StudioError,
    is_out_of_memory,
)
from storage import repository as repo

from .context import AppContext

log = logging.getLogger(__name__)

PICK = {"text": "a language model", "image": "an image model"}


@dataclass
class Recording:
    """The generation in progress: its row's id and the model held for it. The body sets `outcome` and the
    row's measured `fields` (seed, token counts, timings) before it ends; a body that raises is recorded as
    `cancelled` or `error` whatever it set."""

    id: str
    generator: Any = None  # the Generator held (a TextGenerator or ImageGenerator by the declared modality)
    outcome: str = "ok"
    fields: dict[str, Any] = field(default_factory=dict)


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


@contextmanager
def recorded_generation(
    ctx: AppContext,
    owner: str,
    model: str,
    params: dict[str, Any],
    *,
    modality: Modality,
    seed: int | None = None,
    source: str = "ui",
    session_id: str | None = None,
    progress: ProgressFn | None = None,
    count_request: bool = True,
    what: str = "Generation",
    on_start: Callable[[str], None] | None = None,
    on_end: Callable[[str], None] | None = None,
) -> Iterator[Recording]:
    """Record one generation around the body, which gets a `Recording` holding the model (`modality` is the
    kind the model must declare).

    `count_request=False`: the request already counted against the owner's rate limit (another choice of one
    API call). `on_start(generation_id)` runs once the row exists; `on_end(outcome)` runs just before the row
    is finished, on every path — where the caller settles what it keeps of the output (a reply's partial text
    and its status). `what` names the work in the messages ("Image generation failed: …")."""
    if count_request:
        ctx.check_rate(owner)
    with ctx.store.begin() as s:
        row = repo.start_generation(s, owner, model, params, session_id=session_id, source=source, seed=seed,
                                    instance_id=ctx.store.instance_id)
    recording = Recording(row.id)
    if on_start is not None:
        on_start(row.id)
    try:
        with ctx.registry.use(model, progress, owner=owner) as gen:
            _check_modality(gen, model, modality)
            recording.generator = gen
            yield recording
    except (GenerationCancelledError, GeneratorExit):  # stopped: nothing of the output is kept as finished
        _finish(ctx, recording.id, "cancelled", on_end)
        raise
    except BaseException as exc:  # record every failure, then let the edge translate it
        if is_out_of_memory(exc):
            error: StudioError = OutOfMemoryError(out_of_memory_message(ctx, model, exc))
        elif isinstance(exc, StudioError):
            error = exc
        else:
            error = GenerationFailedError(f"{what} failed: {exc}")
        if not isinstance(exc, StudioError):
            log.exception("%s with %s failed", what, model)
        _finish(ctx, recording.id, "error", on_end, error=str(error))
        if error is exc or isinstance(exc, KeyboardInterrupt):
            raise
        raise error from exc
    _finish(ctx, recording.id, recording.outcome, on_end, **recording.fields)


def _check_modality(gen: Generator, model: str, modality: Modality) -> None:
    if gen.info.modality != modality:
        raise InvalidOptionsError(f"{model!r} is not a{'n' if modality == 'image' else ''} {modality} model; "
                                  f"pick {PICK[modality]}.")


def _finish(ctx: AppContext, generation_id: str, outcome: str, on_end: Callable[[str], None] | None,
            **fields: Any) -> None:
    if on_end is not None:
        on_end(outcome)
    with ctx.store.begin() as s:
        repo.finish_generation(s, generation_id, outcome, **fields)
