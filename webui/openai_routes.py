"""The OpenAI endpoints: POST /v1/chat/completions and POST /v1/completions (the legacy text endpoint).

Both parse the body with the protocol models (a 400 naming the field, as OpenAI answers), build one
TextRequest per choice and run every choice through the generation service at once, so `n` choices (and
a list of prompts) are decoded together in the model's batch. Streaming interleaves the choices' deltas
by `index`, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, cast

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from generators.base import (
    CAP_COMPLETION,
    CAP_LOGPROBS,
    ChatMessage,
    InvalidOptionsError,
    SamplingParams,
    StudioError,
    TextGenerator,
    TextRequest,
    TokenLogprob,
)

from . import protocol as wire
from .services import characters, presets
from .services.context import AppContext
from .services.generation import RunResult, sampling_params, stream_text

FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", None: "stop"}

Runs = Iterator[tuple[str, RunResult]]


@dataclass(frozen=True)
class Choice:
    """One choice to decode: its index in the answer, its request, and what is echoed before it."""

    index: int
    request: TextRequest
    echo: str = ""
    echo_logprobs: tuple[TokenLogprob, ...] | None = None
    preset: str | None = None  # the sampler preset its parameters started from


def seeded(params: SamplingParams, offset: int) -> SamplingParams:
    """Choice `offset` of a seeded request: its own seed (seed + offset), so n choices differ and repeat."""
    if params.seed is None or offset == 0:
        return params
    return params.model_copy(update={"seed": (params.seed + offset) % wire.SEED_SPACE})


def text_model(ctx: AppContext, name: str | None, owner: str | None = None) -> tuple[str, TextGenerator]:
    """The requested text model as `owner` may use it (their own models too; someone else's is unknown)."""
    model = name or ctx.default_model
    gen = ctx.registry.get_visible(model, owner or ctx.default_owner)
    if gen.info.modality != "text":
        raise wire.RequestError(f"{model!r} is not a text model; pick a language model from GET /v1/models.",
                                "model", "model_not_found")
    return model, cast(TextGenerator, gen)


def check_logprobs(model: str, gen: TextGenerator, wanted: bool, param: str) -> None:
    if wanted and CAP_LOGPROBS not in gen.info.capabilities:
        raise wire.RequestError(f"{model} cannot return log-probabilities; leave '{param}' unset.", param)


def check_with_model(ctx: AppContext, owner: str | None, model: str, gen: TextGenerator, params: SamplingParams) -> None:
    """What only the model can judge, before anything runs or is recorded: whether it applies `logit_bias`
    and whether the ids are in its vocabulary (known once it is loaded, so it is loaded now: the generation
    that follows needs it anyway). A 400 naming `logit_bias`, as OpenAI answers."""
    if not params.logit_bias or not ctx.registry.visible(model, owner or ctx.default_owner):
        return  # (someone else's model: the generation says it does not exist)
    request = TextRequest(prompt="", params=params)
    try:
        gen.check_request(request)  # the declared capability: no need to load a model that cannot
        if gen.vocabulary_size is None and not gen.loaded:
            ctx.registry.load(model).check_request(request)  # type: ignore[attr-defined]
    except InvalidOptionsError as exc:
        raise wire.RequestError(str(exc), exc.param or "logit_bias", None) from None


# ---------------------------------------------------------------- chat


def request_params(ctx: AppContext, owner: str | None, body: wire.SamplingFields, model: str,
                   max_new_tokens: int | None) -> tuple[SamplingParams, str | None]:
    """The request's sampler fields on top of the preset it names (the `preset` extension), if any, and
    that preset's name."""
    try:
        chosen = presets.named_preset(ctx, owner or ctx.default_owner, body.preset, model)
    except InvalidOptionsError as exc:
        raise wire.RequestError(str(exc), "preset") from None
    given = {k: v for k, v in body.sampling(max_new_tokens).items() if v is not None}
    return sampling_params({**(chosen.params if chosen else {}), **given}, ctx), chosen.name if chosen else None


def chat_choices(ctx: AppContext, body: wire.ChatCompletionRequest, owner: str | None = None) -> tuple[str, list[Choice]]:
    model, gen = text_model(ctx, body.model, owner)
    for param, kind in body.media_parts():
        raise wire.RequestError(f"Invalid content type. {kind} is only supported by certain models; {model} reads "
                                "text only.", param, None)
    check_logprobs(model, gen, body.logprobs is True, "logprobs")
    params, preset = request_params(ctx, owner, body, model, body.max_new_tokens)
    check_with_model(ctx, owner, model, gen, params)
    messages = tuple(ChatMessage("system" if m.role == "developer" else m.role, m.text())  # type: ignore[arg-type]
                     for m in body.messages)
    ctx.check_text("".join(m.content for m in messages), "conversation")
    if body.character is not None:  # the same context a chat with that character gets on the page
        try:
            messages = tuple(characters.context_for_request(ctx, owner or ctx.default_owner, body.character,
                                                            body.persona, messages))
        except characters.UnknownAssetError as exc:
            raise wire.RequestError(str(exc), exc.field) from None
    return model, [Choice(i, TextRequest(messages=messages, params=seeded(params, i), logprobs=body.top_logprob_count),
                          preset=preset) for i in range(body.choices)]


async def chat_completions(ctx: AppContext, owner: str, request: Request) -> Any:
    body = wire.parse(wire.ChatCompletionRequest, await request.body())
    model, choices = await run_in_threadpool(chat_choices, ctx, body, owner)  # it may load the model (logit_bias)
    ctx.check_rate(owner, consume=False)
    cid = "chatcmpl-" + uuid.uuid4().hex
    cancel = threading.Event()
    runs = start_runs(ctx, owner, model, choices, cancel)
    unwatch = ctx.watch_api_request(owner, cancel)  # revoking the user's keys stops it too
    if not body.stream:
        try:
            results = await drain(runs, cancel)
        finally:
            unwatch()
        out = [wire.chat_choice(c.index, r.text, FINISH[r.finish_reason], wire.chat_logprobs(r.logprobs) if
                                c.request.logprobs is not None else None) for c, r in zip(choices, results, strict=True)]
        return JSONResponse(wire.chat_completion_body(cid, model, out, total_usage(results, len(choices))))

    def event(choice: Choice, delta: str, logprobs: list[TokenLogprob], first: bool, finish: str | None) -> dict[str, Any]:
        piece: dict[str, Any] = {"content": delta}
        if first:
            piece = {"role": "assistant", "content": delta, "refusal": None}
        elif finish is not None and not delta:
            piece = {}
        lp = wire.chat_logprobs(logprobs) if choice.request.logprobs is not None and (logprobs or delta) else None
        return wire.chat_chunk(cid, model, [{"index": choice.index, "delta": piece, "logprobs": lp, "finish_reason": finish}],
                               with_usage_field=body.include_usage)

    def final(results: list[RunResult]) -> dict[str, Any]:
        return wire.chat_chunk(cid, model, [], use=total_usage(results, len(choices)))

    stream = sse(runs, choices, event, final if body.include_usage else None, first_event=True)
    return CancellingStream(runs, cancel, stream, media_type="text/event-stream", on_close=unwatch)


# ---------------------------------------------------------------- completions


def completion_choices(ctx: AppContext, body: wire.CompletionRequest, owner: str | None = None) -> tuple[str, list[Choice]]:
    """One choice per (prompt, candidate); with best_of > n the candidates are ranked afterwards."""
    model, gen = text_model(ctx, body.model, owner)
    if CAP_COMPLETION not in gen.info.capabilities:
        raise wire.RequestError(f"{model} only chats; use POST /v1/chat/completions for it.", "model")
    check_logprobs(model, gen, body.logprobs is not None or body.candidates > body.choices, "logprobs")
    prompts = body.prompts()
    for p in prompts:
        ctx.check_text(p, "prompt")
    ctx.check_max_new_tokens(body.max_new_tokens)
    params, preset = request_params(ctx, owner, body, model, max(1, body.max_new_tokens))
    check_with_model(ctx, owner, model, gen, params)
    wanted = body.logprobs if body.logprobs is not None else (0 if body.candidates > body.choices else None)
    choices = []
    for p_index, prompt in enumerate(prompts):
        echoed = None
        if body.echo and body.logprobs is not None:
            with ctx.registry.use(model, owner=owner or ctx.default_owner) as loaded:
                echoed = tuple(loaded.prompt_logprobs(prompt, body.logprobs))  # type: ignore[attr-defined]
        for j in range(body.candidates):
            request = TextRequest(prompt=prompt, params=seeded(params, j), logprobs=wanted)
            choices.append(Choice(p_index * body.candidates + j, request, prompt if body.echo else "", echoed, preset))
    return model, choices


async def completions(ctx: AppContext, owner: str, request: Request) -> Any:
    body = wire.parse(wire.CompletionRequest, await request.body())
    ctx.check_rate(owner, consume=False)
    model, choices = await run_in_threadpool(completion_choices, ctx, body, owner)
    per_prompt = body.candidates
    cid = "cmpl-" + uuid.uuid4().hex
    cancel = threading.Event()
    scoring_only = body.max_new_tokens == 0
    runs = [] if scoring_only else start_runs(ctx, owner, model, choices, cancel)
    unwatch = ctx.watch_api_request(owner, cancel)  # revoking the user's keys stops it too
    if not body.stream:
        try:
            results = await drain(runs, cancel) if runs else [RunResult(finish_reason="length") for _ in choices]
        finally:
            unwatch()
        scored = [(c, r) for c, r in zip(choices, results, strict=True)]
        if body.candidates > body.choices:  # best_of: the candidates with the highest mean token logprob
            scored = best_of(scored, body.candidates, body.choices)
        out = []
        for i, (c, r) in enumerate(scored):
            index = i if body.candidates > body.choices else c.index
            logprobs = None
            if body.logprobs is not None:
                entries = list(c.echo_logprobs or ()) + r.logprobs
                logprobs = wire.completion_logprobs(entries)
            out.append(wire.text_choice(index, c.echo + r.text, FINISH[r.finish_reason], logprobs))
        use = total_usage(results, per_prompt)
        if scoring_only:
            use = wire.usage(sum(len(c.echo_logprobs or ()) for c in choices), 0)
        return JSONResponse(wire.text_completion_body(cid, model, out, use))
    if scoring_only:
        raise wire.RequestError("Invalid 'max_tokens': a streamed completion needs max_tokens >= 1.", "max_tokens",
                                "integer_below_min_value")
    offsets = {c.index: len(c.echo) for c in choices}

    def event(choice: Choice, delta: str, logprobs: list[TokenLogprob], first: bool, finish: str | None) -> dict[str, Any]:
        text = (choice.echo + delta) if first else delta
        lp = None
        if choice.request.logprobs is not None and body.logprobs is not None:
            entries = (list(choice.echo_logprobs or ()) if first else []) + logprobs
            lp = wire.completion_logprobs(entries, 0 if first else offsets[choice.index])
            offsets[choice.index] += len(delta)
        return wire.text_completion_body(cid, model, [wire.text_choice(choice.index, text, finish, lp)], None, chunk=True)

    def final(results: list[RunResult]) -> dict[str, Any]:
        return wire.text_completion_body(cid, model, [], total_usage(results, per_prompt), chunk=True)

    stream = sse(runs, choices, event, final if body.include_usage else None, first_event=False)
    return CancellingStream(runs, cancel, stream, media_type="text/event-stream", on_close=unwatch)


def best_of(scored: list[tuple[Choice, RunResult]], candidates: int, keep: int) -> list[tuple[Choice, RunResult]]:
    out = []
    for start in range(0, len(scored), candidates):
        group = scored[start:start + candidates]

        def mean_logprob(item: tuple[Choice, RunResult]) -> float:
            lps = [e.logprob for e in item[1].logprobs if e.logprob is not None]
            return sum(lps) / len(lps) if lps else float("-inf")

        out += sorted(group, key=mean_logprob, reverse=True)[:keep]
    return [(replace(c, index=i), r) for i, (c, r) in enumerate(out)]


# ---------------------------------------------------------------- running choices together


def start_runs(ctx: AppContext, owner: str, model: str, choices: list[Choice], cancel: threading.Event) -> list[Runs]:
    """One generation per choice; the request counts once against the rate limit."""
    return [stream_text(ctx, owner, model, c.request, cancel=cancel, source="api", count_request=i == 0,
                        preset=c.preset)
            for i, c in enumerate(choices)]


def total_usage(results: list[RunResult], per_prompt: int) -> dict[str, int]:
    """OpenAI counts each prompt once (not once per choice) and every choice's completion tokens."""
    prompt = sum(max(r.prompt_tokens for r in results[i:i + per_prompt]) for i in range(0, len(results), per_prompt))
    return wire.usage(prompt, sum(r.completion_tokens for r in results))


async def merged(runs: list[Runs], stop_on_error: bool = True) -> AsyncIterator[Any]:
    """(choice, delta, result) from every run as they come: each run advances in its own worker thread,
    so all choices are in the model's batch at once. With stop_on_error=False: (choice, delta, result,
    error) for every event, errors included, until every run has ended."""
    queue: asyncio.Queue[tuple[int, str, RunResult | None, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, run: Runs) -> None:
        try:
            async for delta, result in iterate_in_threadpool(run):
                await queue.put((i, delta, result, None))
            await queue.put((i, "", None, None))
        except BaseException as exc:  # noqa: BLE001 (handed to the consumer, which re-raises it)
            await queue.put((i, "", None, exc))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(runs)]
    open_runs = len(runs)
    try:
        while open_runs:
            i, delta, result, error = await queue.get()
            if error is not None and stop_on_error:
                raise error
            if result is None:
                open_runs -= 1
                if error is not None:
                    yield i, delta, None, error
                continue
            yield (i, delta, result) if stop_on_error else (i, delta, result, None)
    finally:
        for t in tasks:
            t.cancel()


async def drain(runs: list[Runs], cancel: threading.Event) -> list[RunResult]:
    """Every run to its end. The first error stops the other choices (within a token; each is recorded as
    cancelled) and is raised for the edge to translate."""
    results = [RunResult() for _ in runs]
    first_error: BaseException | None = None
    async for i, _delta, result, error in merged(runs, stop_on_error=False):
        if error is not None:
            first_error = first_error or error
            cancel.set()
        elif result is not None:
            results[i] = result
    if first_error is not None:
        raise first_error
    return results


EventFn = Callable[[Choice, str, list[TokenLogprob], bool, str | None], dict[str, Any]]


async def sse(runs: list[Runs], choices: list[Choice], event: EventFn,
              final: Callable[[list[RunResult]], dict[str, Any]] | None, first_event: bool) -> AsyncIterator[str]:
    """Server-sent events: each choice's deltas (with the logprobs of the tokens they carry), its finish
    event, the usage chunk when asked, then [DONE]. Errors after the headers go out as an error event."""

    def line(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    sent_logprobs = [0] * len(runs)
    started = [False] * len(runs)
    results = [RunResult() for _ in runs]
    if first_event:
        for i, c in enumerate(choices):
            started[i] = True
            yield line(event(c, "", [], True, None))
    try:
        async for i, delta, result in merged(runs):
            results[i] = result
            choice = choices[i]
            done = result.outcome != "running"
            if delta or (done and not started[i]):
                new = result.logprobs[sent_logprobs[i]:]
                sent_logprobs[i] = len(result.logprobs)
                yield line(event(choice, delta, new, not started[i], None))
                started[i] = True
            if done:
                new = result.logprobs[sent_logprobs[i]:]
                sent_logprobs[i] = len(result.logprobs)
                yield line(event(choice, "", new, False, FINISH[result.finish_reason]))
        if final is not None:
            yield line(final(results))
    except StudioError as exc:
        yield line(wire.studio_error_body(exc))
    yield "data: [DONE]\n\n"


class CancellingStream(StreamingResponse):
    """A streamed reply that stops its generations when the client goes away.

    Starlette stops iterating on disconnect without closing the iterators, so the generations are
    cancelled (within one token) and closed here, which records them.
    """

    def __init__(self, runs: list[Runs], cancel: threading.Event, content: AsyncIterator[str],
                 on_close: Callable[[], None] = lambda: None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._runs = runs
        self._cancel = cancel
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cancel.set()
            self._on_close()
            for run in self._runs:
                await close_run(run)


async def close_run(run: Runs, patience_s: float = 30.0) -> None:
    """Close a generation (recording how it ended). One still executing in a worker thread sees the cancel
    event within a token; closing is retried until that step has returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        try:
            await run_in_threadpool(run.close)  # type: ignore[attr-defined]
            return
        except ValueError:  # "generator already executing"
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.02)
