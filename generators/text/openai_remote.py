"""Any OpenAI-compatible server as a text model: vLLM, TGI, llama.cpp server, another AIGC Studio.

Plain HTTP with httpx (not the openai package, a dev-only dependency). Replies stream as
server-sent events (`data: {...}` lines, `data: [DONE]`) and become `TextChunk`s as they
arrive. A cancel event is checked between chunks, and a watcher thread shuts the socket
down as soon as it is set, so a read that is waiting for the server returns at once and the
server sees the client go away (vLLM aborts the request, a studio records it as cancelled).

Which endpoint a request uses:

- messages → `/chat/completions` (the server applies the model's chat template);
- a raw prompt → `/completions`, the endpoint that continues text as it is (vLLM, TGI and
  llama.cpp server have it). A server without it (404/405, e.g. another AIGC Studio, which
  serves only chat) gets the prompt as one user message on `/chat/completions`; that is then
  an instruction to an instruct model rather than text to continue, the closest it can do.
  The fallback is remembered for the rest of the session;
- with `chat = false` (a base model without a chat template) everything goes to
  `/completions`; messages become the same plain transcript the transformers plugin writes.

Connection errors and 429/502/503/504 answers are retried (`max_retries`, exponential
backoff, `Retry-After` honoured) before anything was streamed, never after. Token counts
come from the server's `usage` (asked for with `stream_options.include_usage`); servers that
send none get chunk counts and a characters/4 estimate of the prompt. Without a seed in the
request the plugin draws one and sends it, so the stats name a seed that makes it again on
servers that honour seeds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator

from ..base import (
    CAP_CANCEL,
    CAP_CHAT,
    CAP_COMPLETION,
    CAP_LOGIT_BIAS,
    CAP_SEED,
    CAP_STREAM,
    BusyError,
    GenerationFailedError,
    GenerationStats,
    GeneratorInfo,
    InvalidOptionsError,
    LoadFailedError,
    ProgressFn,
    SamplingParams,
    StreamClock,
    StrictModel,
    TextChunk,
    TextGenerator,
    TextRequest,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_S = 20.0
Finish = Literal["stop", "length", "cancelled"]


class OpenAIRemoteOptions(StrictModel):
    base_url: str = Field(description="the server's OpenAI API root, e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = Field(None, description="sent as `Authorization: Bearer KEY`")
    api_key_env: str | None = Field(None, description="name of an environment variable that holds the key")
    model: str = Field("", description="the server's model name; empty = the first one the server lists")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="connect timeout, and the longest silence while reading")
    max_retries: int = Field(2, ge=0, le=10, description="retries of connection errors and 429/502/503/504 before streaming")
    context_window: int = Field(4096, ge=16, le=10_000_000, description="the served model's context window in tokens")
    chat: bool = Field(True, description="false: a base model; everything goes to /completions as plain text")
    send_extensions: bool = Field(
        True, description="send top_k, min_p and repetition_penalty (vLLM, llama.cpp, studio); off for strict servers"
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:8000/v1")
        return v

    @model_validator(mode="after")
    def _one_key(self) -> "OpenAIRemoteOptions":
        if self.api_key is not None and self.api_key_env:
            raise ValueError("set api_key or api_key_env, not both")
        return self


class _MissingEndpoint(Exception):
    """The server has no such endpoint (404/405): fall back to chat."""


class OpenAIRemote(TextGenerator):
    info = GeneratorInfo(
        plugin="openai-remote",
        modality="text",
        family="remote",
        description="a model served by any OpenAI-compatible server (vLLM, TGI, llama.cpp server, another AIGC Studio)",
        capabilities=frozenset({CAP_STREAM, CAP_CHAT, CAP_COMPLETION, CAP_CANCEL, CAP_SEED, CAP_LOGIT_BIAS}),
        params=SamplingParams,
        load_options=OpenAIRemoteOptions,
    )
    options: OpenAIRemoteOptions

    backoff_s: ClassVar[float] = 0.5  # first retry delay; doubles each retry (tests shorten it)

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self.client: httpx.Client | None = None
        self.served_model: str | None = None
        self.server_models: list[str] = []
        self._has_completions: bool | None = None  # unknown until a prompt was sent

    # ------------------------------------------------------------ lifecycle
    def _load(self, progress: ProgressFn) -> None:
        opts = self.options
        headers = {"Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(opts.timeout_s)
        client = httpx.Client(timeout=timeout, headers=headers)
        progress(f"Connecting to {opts.base_url}…")
        try:
            self.server_models = self._list_models(client)
        except BaseException:
            client.close()
            raise
        if not self.server_models:
            client.close()
            raise LoadFailedError(f"{opts.base_url} serves no models (its /models list is empty).")
        if opts.model and opts.model not in self.server_models:
            client.close()
            raise LoadFailedError(
                f"model {opts.model!r} not served by {opts.base_url}; the server has: {', '.join(self.server_models)}."
            )
        self.served_model = opts.model or self.server_models[0]
        self.client = client
        self._has_completions = None
        log.info("%s: %s at %s", self.name, self.served_model, opts.base_url)

    def _unload(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.served_model = None

    def _api_key(self) -> str | None:
        opts = self.options
        if opts.api_key is not None:
            return opts.api_key.get_secret_value() or None
        if opts.api_key_env:
            value = os.environ.get(opts.api_key_env, "").strip()
            if not value:
                raise LoadFailedError(
                    f"api_key_env names the environment variable {opts.api_key_env}, but it is not set (or empty) "
                    "in the studio's environment."
                )
            return value
        return None

    def _list_models(self, client: httpx.Client) -> list[str]:
        url = f"{self.options.base_url}/models"
        response = self._retrying(lambda: client.get(url), url, None, loading=True)
        if response is None:  # cannot happen without a cancel event
            raise LoadFailedError(f"cannot reach {url}")
        status = response.status_code
        if status in (401, 403):
            raise LoadFailedError(
                f"{status} from server: check api_key (or api_key_env) — {self.options.base_url} said: "
                f"{_server_message(response)}"
            )
        if status == 404:
            raise LoadFailedError(
                f"{url} was not found (404): base_url should be the server's OpenAI API root, "
                "which usually ends in /v1 (e.g. http://127.0.0.1:8000/v1)."
            )
        if status >= 400:
            raise LoadFailedError(f"{status} from {url}: {_server_message(response)}")
        try:
            data = response.json()["data"]
            return [str(m["id"]) for m in data]
        except (ValueError, KeyError, TypeError):
            raise LoadFailedError(
                f"{url} did not answer like an OpenAI-compatible server (no JSON model list): {response.text[:200]!r}"
            ) from None

    # ------------------------------------------------------------ info
    @property
    def context_window(self) -> int:
        return self.options.context_window

    def supports_chat(self) -> bool:
        return self.options.chat

    def estimated_memory_bytes(self) -> int:
        return 0  # the weights live on the server

    def memory_bytes(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        d = super().describe()  # options: api_key is a SecretStr and shows as ****
        d["device"] = "remote"
        d["base_url"] = self.options.base_url
        d["remote_model"] = self.served_model
        d["context_window"] = self.context_window
        return d

    # count_tokens: the base class's characters/4 estimate. Servers' tokenize endpoints differ
    # (vLLM /tokenize, llama.cpp /tokenize, TGI /tokenize, none on OpenAI) and would cost a round trip per call.

    def _require_loaded(self) -> httpx.Client:
        if not self.loaded or self.client is None:
            raise LoadFailedError(f"Model {self.name!r} is not loaded.")
        return self.client

    # ------------------------------------------------------------ requests
    def _body(self, request: TextRequest, seed: int, chat: bool) -> tuple[str, dict[str, Any], str]:
        """(endpoint, JSON body, the prompt text as sent — for estimating prompt tokens)."""
        p = request.params
        body: dict[str, Any] = {
            "model": self.served_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_new_tokens,
            "seed": seed,
        }
        if p.stop:
            body["stop"] = list(p.stop)
        # OpenAI's own fields, sent when in use (logit_bias names the served model's token ids: the server checks them)
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logit_bias:
            body["logit_bias"] = {str(t): int(b) if float(b).is_integer() else b for t, b in p.logit_bias.items()}
        if self.options.send_extensions:
            body.update(top_k=p.top_k, min_p=p.min_p, repetition_penalty=p.repetition_penalty)
            # llama.cpp's server, koboldcpp and text-generation-webui read these; sent only when in use
            if p.typical_p < 1.0:
                body["typical_p"] = p.typical_p
            if p.dry_multiplier > 0.0:
                body.update(dry_multiplier=p.dry_multiplier, dry_base=p.dry_base,
                            dry_allowed_length=p.dry_allowed_length, dry_sequence_breakers=list(p.dry_sequence_breakers))
            if p.xtc_probability > 0.0:
                body.update(xtc_probability=p.xtc_probability, xtc_threshold=p.xtc_threshold)
        if chat:
            if request.prompt is not None:
                messages = [{"role": "user", "content": request.prompt}]
            else:
                messages = [{"role": m.role, "content": m.content} for m in request.messages]
            body["messages"] = messages
            return "/chat/completions", body, "".join(m["content"] for m in messages)
        if request.prompt is not None:
            prompt = request.prompt
        else:  # a base model: the same plain transcript the transformers plugin writes
            prompt = "".join(f"{m.role.capitalize()}: {m.content}\n" for m in request.messages) + "Assistant:"
        body["prompt"] = prompt
        return "/completions", body, prompt

    def _use_chat(self, request: TextRequest) -> bool:
        if not self.options.chat:
            return False
        return request.prompt is None or self._has_completions is False

    def _retrying(self, send: Any, url: str, cancel: threading.Event | None, *, loading: bool = False) -> httpx.Response | None:
        """Send until an answer that is not worth retrying; None when cancelled while waiting."""
        error_type = LoadFailedError if loading else GenerationFailedError
        retries = self.options.max_retries
        for attempt in range(retries + 1):
            delay = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
            try:
                response = send()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if attempt == retries:
                    raise error_type(_unreachable(url, exc, self.options.timeout_s, retries)) from exc
                log.info("%s: %s (retrying in %.1f s)", self.name, exc, delay)
            except httpx.TimeoutException as exc:
                raise error_type(f"no answer from {url} within {self.options.timeout_s:g} s (timeout_s).") from exc
            except httpx.HTTPError as exc:
                raise error_type(f"request to {url} failed: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt == retries:
                    return response
                delay = _retry_after(response, delay)
                log.info("%s: %s from %s (retrying in %.1f s)", self.name, response.status_code, url, delay)
                response.close()
            if cancel is not None:
                if cancel.wait(delay):
                    return None
            else:
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _open(
        self, client: httpx.Client, endpoint: str, body: dict[str, Any], cancel: threading.Event | None
    ) -> httpx.Response | None:
        url = self.options.base_url + endpoint

        def send() -> httpx.Response:
            return client.send(client.build_request("POST", url, json=body), stream=True)

        response = self._retrying(send, url, cancel)
        if response is None or response.status_code < 400:
            return response
        try:
            response.read()
        except httpx.HTTPError:
            pass
        finally:
            response.close()
        status = response.status_code
        if endpoint == "/completions" and status in (404, 405) and self.options.chat:
            raise _MissingEndpoint()
        raise _http_error(status, self.options.base_url, _server_message(response))

    # ------------------------------------------------------------ generation
    def _stream_chunks(self, request: TextRequest, cancel: threading.Event | None,
                       clock: StreamClock) -> Iterator[TextChunk]:
        client = self._require_loaded()
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        chat = self._use_chat(request)
        endpoint, body, sent_text = self._body(request, seed, chat)
        usage: dict[str, Any] = {}
        finish: Finish | None = None

        def stats() -> GenerationStats:
            """The server's own token counts where it sent them (else the chunks relayed, as tokens)."""
            clock.begin(int(usage.get("prompt_tokens") or self.count_tokens(sent_text)), seed)
            if usage.get("completion_tokens"):
                clock.tokens = int(usage["completion_tokens"])
            return clock.stats()

        if cancel is not None and cancel.is_set():
            yield TextChunk("", finish_reason="cancelled", stats=stats())
            return
        try:
            response = self._open(client, endpoint, body, cancel)
        except _MissingEndpoint:
            log.info("%s: %s has no /completions; prompts go to /chat/completions", self.name, self.options.base_url)
            chat = True
            endpoint, body, sent_text = self._body(request, seed, chat)
            response = self._open(client, endpoint, body, cancel)
            if response is not None:
                self._has_completions = False
        else:
            if endpoint == "/completions" and response is not None:
                self._has_completions = True
        if response is None:  # cancelled while waiting to retry
            yield TextChunk("", finish_reason="cancelled", stats=stats())
            return
        done = threading.Event()
        if cancel is not None:
            threading.Thread(target=_abort_on_cancel, args=(cancel, done, response), daemon=True).start()
        url = self.options.base_url + endpoint
        try:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # A server that ignored stream=true: one JSON reply.
                text, finish, usage = _whole_reply(response, chat, url)
                clock.token(1 if text else 0)
                if text:
                    yield TextChunk(text)
                yield TextChunk("", finish_reason=finish or "stop", stats=stats())
                return
            ended_cleanly = False
            lines = response.iter_lines()
            while True:
                if cancel is not None and cancel.is_set():
                    finish = finish or "cancelled"
                    break
                try:
                    line = next(lines)
                except StopIteration:
                    break
                except httpx.HTTPError as exc:
                    if cancel is not None and cancel.is_set():
                        finish = finish or "cancelled"
                        break
                    if isinstance(exc, httpx.TimeoutException):
                        why = f"the server sent nothing for {self.options.timeout_s:g} s (timeout_s)"
                    else:
                        why = f"the connection broke ({exc})"
                    raise GenerationFailedError(f"{url}: {why} after {clock.tokens} chunk(s) of the reply.") from exc
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    ended_cleanly = True
                    break
                try:
                    event = json.loads(data)
                except ValueError:
                    raise GenerationFailedError(f"{url} sent an event that is not JSON: {data[:200]!r}") from None
                if not isinstance(event, dict):
                    continue
                _raise_stream_error(event, self.options.base_url)
                if isinstance(event.get("usage"), dict):
                    usage = event["usage"]
                for choice in (event.get("choices") or [])[:1]:
                    text = _choice_text(choice, chat)
                    if text:
                        clock.token()  # a chunk of the reply, counted as a token unless the server counts
                        yield TextChunk(text)
                    reason = choice.get("finish_reason")
                    if reason:
                        finish = "length" if reason in ("length", "max_tokens") else "stop"
            if finish is None and cancel is not None and cancel.is_set():
                finish = "cancelled"  # the socket was shut down under a read that then saw a clean end
            if finish is None and not ended_cleanly:
                raise GenerationFailedError(
                    f"{url}: the server closed the stream before the reply was finished, after {clock.tokens} chunk(s)."
                )
        finally:
            done.set()
            response.close()
        yield TextChunk("", finish_reason=finish or "stop", stats=stats())


# ---------------------------------------------------------------- helpers


def _abort_on_cancel(cancel: threading.Event, done: threading.Event, response: httpx.Response) -> None:
    """Shut the socket down when `cancel` is set: a blocked read returns now and the server sees us go."""
    while not done.wait(0.05):
        if cancel.is_set():
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except (OSError, ValueError, AttributeError):
                    pass
            return


def _sse_data(line: str) -> str | None:
    """The payload of a `data:` line; None for other SSE lines (comments, event:, id:, blank).

    OpenAI-compatible servers put one JSON object on one line, so each data line is an event.
    """
    if not line.startswith("data:"):
        return None
    value = line[5:]
    return (value[1:] if value.startswith(" ") else value).strip()


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or choice.get("message") or {}
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def _whole_reply(response: httpx.Response, chat: bool, url: str) -> tuple[str, Finish | None, dict[str, Any]]:
    response.read()
    try:
        body = response.json()
        choice = body["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        raise GenerationFailedError(f"{url} did not answer like an OpenAI-compatible server: {response.text[:200]!r}") from None
    reason = choice.get("finish_reason")
    finish: Finish | None = ("length" if reason == "length" else "stop") if reason else None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return _choice_text(choice, chat), finish, usage


def _server_message(response: httpx.Response) -> str:
    """The server's own error message, from the shapes OpenAI, vLLM, TGI, llama.cpp and FastAPI use."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key]) if not isinstance(body[key], list) else json.dumps(body[key])[:500]
    return json.dumps(body)[:500]


def _http_error(status: int, base_url: str, message: str) -> Exception:
    if status == 429:
        return BusyError(f"{base_url} is busy (429): {message}")
    if status in (400, 413, 422):
        return InvalidOptionsError(f"{base_url} rejected the request ({status}): {message}")
    if status in (401, 403):
        return GenerationFailedError(f"{status} from server: check api_key (or api_key_env) — {base_url} said: {message}")
    return GenerationFailedError(f"{base_url} answered {status}: {message}")


def _raise_stream_error(event: dict[str, Any], base_url: str) -> None:
    """An error reported inside the stream (the headers were sent already)."""
    err = event.get("error")
    if err is None and event.get("object") == "error":
        err = event
    if err is None:
        return
    if isinstance(err, dict):
        message = str(err.get("message") or err)
        code = f"{err.get('code')} {err.get('type')}".lower()
    else:
        message, code = str(err), str(event.get("error_type", "")).lower()
    if "busy" in code or "rate_limit" in code or "429" in code or "overloaded" in code:
        raise BusyError(f"{base_url} is busy: {message}")
    raise GenerationFailedError(f"{base_url} reported an error mid-reply: {message}")


def _retry_after(response: httpx.Response, default: float) -> float:
    try:
        return max(0.0, min(float(response.headers.get("retry-after", "")), MAX_BACKOFF_S))
    except ValueError:
        return default


def _unreachable(url: str, exc: Exception, timeout_s: float, retries: int) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        reason = f"no connection within {timeout_s:g} s"
    elif "refused" in text.lower():
        reason = "connection refused"
    elif isinstance(exc, httpx.RemoteProtocolError):
        reason = f"the server closed the connection without answering ({text})"
    else:
        reason = text
    tries = f" ({retries + 1} tries)" if retries else ""
    return f"cannot reach {url}: {reason}{tries} — is the server running, and is base_url right?"
