"""The openai-remote plugin: against a second, real studio (tiny model) on loopback, and against a
scripted local HTTP server for what a real server rarely does on demand (429, broken streams)."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from generators.base import (
    CAP_LOGIT_BIAS,
    BusyError,
    ChatMessage,
    GenerationFailedError,
    InvalidOptionsError,
    LoadFailedError,
    SamplingParams,
    TextRequest,
)
from generators.registry import ModelSpec, Registry
from generators.text import openai_remote
from generators.text.openai_remote import OpenAIRemote
from tests.conftest import RunningApp, free_port


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OpenAIRemote, "backoff_s", 0.05)


def chat(text: str, **params: Any) -> TextRequest:
    return TextRequest(messages=(ChatMessage("user", text),), params=SamplingParams(**params))


def collect(gen: OpenAIRemote, request: TextRequest, cancel: threading.Event | None = None) -> tuple[str, Any]:
    text, last = gen.generate(request, cancel)
    return text, last


# ------------------------------------------------------------------ a second studio on loopback


@pytest.fixture(scope="module")
def studio(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """One studio for the module (the running_app machinery of conftest, started once)."""
    app = RunningApp(
        tmp_path_factory.mktemp("remote-studio"),
        ["--model", str(tiny_model_dir), "--requests-per-minute", "0"],
        {"OMP_NUM_THREADS": "1"},
    ).start()
    yield app
    app.stop(signal.SIGKILL)  # a throwaway data folder: no need to wait for a graceful shutdown


@pytest.fixture(scope="module")
def remote(studio: RunningApp, tiny_model_dir: Path) -> OpenAIRemote:
    gen = OpenAIRemote("remote-tiny", {"base_url": f"{studio.url}/v1", "model": tiny_model_dir.name, "timeout_s": 30})
    gen.load()
    return gen


def test_load_picks_the_first_served_model_and_finds_a_named_one(studio: RunningApp, remote: OpenAIRemote,
                                                                 tiny_model_dir: Path) -> None:
    auto = OpenAIRemote("auto", {"base_url": f"{studio.url}/v1/"})
    auto.load()
    assert auto.served_model == tiny_model_dir.name == auto.server_models[0]
    assert remote.served_model == tiny_model_dir.name
    d = remote.describe()
    assert d["loaded"] and d["plugin"] == "openai-remote" and d["memory_bytes"] == 0 and d["context_window"] == 4096
    auto.unload()


@pytest.mark.parametrize("temperature", [0.0, 1.0])  # the random tiny model's greedy text is all newlines
def test_stream_matches_the_studios_own_answer(studio: RunningApp, remote: OpenAIRemote, temperature: float) -> None:
    question = "Tell me about the sea."
    want = httpx.post(f"{studio.url}/v1/chat/completions", timeout=60, json={
        "model": remote.served_model, "messages": [{"role": "user", "content": question}],
        "temperature": temperature, "seed": 3, "max_tokens": 24,
    }).json()  # fmt: skip
    parts = list(remote.stream(chat(question, temperature=temperature, seed=3, max_new_tokens=24)))
    assert len([p for p in parts if p.text]) > 3  # it really streamed
    assert "".join(p.text for p in parts) == want["choices"][0]["message"]["content"]
    last = parts[-1]
    assert last.finish_reason == want["choices"][0]["finish_reason"] and last.stats is not None
    assert last.stats.prompt_tokens == want["usage"]["prompt_tokens"] > 0
    assert last.stats.completion_tokens == want["usage"]["completion_tokens"] > 0
    assert last.stats.seed == 3 and last.stats.time_to_first_token_s is not None and last.stats.tokens_per_s


def test_length_and_stop_strings(remote: OpenAIRemote) -> None:
    text, last = collect(remote, chat("Count with me.", temperature=0, max_new_tokens=5))
    assert last.finish_reason == "length" and last.stats.completion_tokens == 5
    sampled = {"temperature": 1.0, "seed": 7, "max_new_tokens": 30}  # same seed, same text
    full, _ = collect(remote, chat("Count with me.", **sampled))
    stop = next(full[k : k + 3] for k in range(5, len(full) - 3) if full.index(full[k : k + 3]) > 0)
    cut, last = collect(remote, chat("Count with me.", stop=(stop,), **sampled))
    assert cut == full[: full.index(stop)] and last.finish_reason == "stop"


def test_a_prompt_goes_to_the_studios_completions_endpoint(remote: OpenAIRemote) -> None:
    prompt = TextRequest(prompt="Once upon a time", params=SamplingParams(temperature=0, max_new_tokens=12))
    text, last = collect(remote, prompt)
    assert remote._has_completions is True  # the studio serves /v1/completions too
    assert text and last.stats.completion_tokens > 0
    assert collect(remote, prompt)[0] == text  # greedy: the same continuation again


def generation_outcomes(studio: RunningApp) -> list[str]:
    with sqlite3.connect(f"file:{studio.data_dir / 'studio.db'}?mode=ro", uri=True) as db:
        return [r[0] for r in db.execute("SELECT outcome FROM generations ORDER BY started_at DESC")]


def test_cancel_mid_stream_stops_at_once_and_the_server_sees_it(studio: RunningApp, remote: OpenAIRemote) -> None:
    cancel = threading.Event()
    parts = []
    for chunk in remote.stream(chat("Go on and on.", temperature=0.9, seed=1, max_new_tokens=400), cancel):
        parts.append(chunk)
        cancel.set()  # after the first chunk: at most one more arrives before the stream ends
    assert parts[-1].finish_reason == "cancelled" and len(parts) <= 3
    assert parts[-1].stats.completion_tokens <= 2
    deadline = time.monotonic() + 15
    while generation_outcomes(studio)[0] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert generation_outcomes(studio)[0] == "cancelled"  # the studio saw the client go away
    text, last = collect(remote, chat("Still there?", temperature=0, max_new_tokens=4))
    assert text and last.finish_reason == "length"


def test_a_server_that_is_down_fails_after_its_retries_with_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    gen = OpenAIRemote("down", {"base_url": url, "timeout_s": 2, "max_retries": 2})
    waits: list[float] = []

    class Clock:  # the plugin's `time`, with its waits written down instead of slept
        def __getattr__(self, name: str) -> Any:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            waits.append(seconds)

    monkeypatch.setattr(openai_remote, "time", Clock())
    with pytest.raises(LoadFailedError, match="connection refused") as exc:
        gen.load()
    assert "(3 tries)" in str(exc.value) and waits == [0.05, 0.1]  # two retries, backing off, none after the last
    assert url in str(exc.value) and "is the server running" in str(exc.value)
    assert not gen.loaded


def test_a_wrong_model_name_lists_the_served_ones(studio: RunningApp, tiny_model_dir: Path) -> None:
    gen = OpenAIRemote("wrong", {"base_url": f"{studio.url}/v1", "model": "gpt-7"})
    with pytest.raises(LoadFailedError, match="'gpt-7' not served") as exc:
        gen.load()
    assert tiny_model_dir.name in str(exc.value) and "smollm2-135m-instruct" in str(exc.value)


def test_an_http_400_carries_the_servers_message(remote: OpenAIRemote) -> None:
    with pytest.raises(InvalidOptionsError, match="this studio allows at most 2,048"):
        collect(remote, chat("Hi", max_new_tokens=4096))


def test_through_the_registry(studio: RunningApp, tiny_model_dir: Path) -> None:
    reg = Registry({"openai-remote": OpenAIRemote})
    reg.add(ModelSpec("far-tiny", "openai-remote", {"base_url": f"{studio.url}/v1", "model": tiny_model_dir.name}))
    with reg.use("far-tiny") as gen:
        text, last = gen.generate(chat("Hello", temperature=0, max_new_tokens=6))
    assert text and last.finish_reason == "length" and last.stats.completion_tokens == 6
    assert reg.describe()[0]["loaded"] and reg.describe()[0]["family"] == "remote"
    reg.unload("far-tiny")
    assert not reg.get("far-tiny").loaded


# ------------------------------------------------------------------ a scripted local server


Reply = Callable[[BaseHTTPRequestHandler], None]


class FakeServer:
    """An HTTP/1.1 server thread: GET /v1/models lists two models; POSTs are answered by `replies` in order."""

    def __init__(self, replies: list[Reply], models: tuple[str, ...] = ("m1", "m2"), key: str | None = None) -> None:
        self.replies = list(replies)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/v1/models":
                    return send_json(self, 404, {"detail": "Not Found"})
                if key and self.headers.get("Authorization") != f"Bearer {key}":
                    return send_json(self, 401, {"error": {"message": "Invalid API key", "type": "auth"}})
                send_json(self, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.posts.append((self.path, body))
                server.replies.pop(0)(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeServer]]:
    made: list[FakeServer] = []

    def make(*replies: Reply, **kwargs: Any) -> FakeServer:
        made.append(FakeServer(list(replies), **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def send_json(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return lambda h: send_json(h, status, body, headers)


def delta(text: str = "", finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def sse_reply(events: list[Any], *, done: bool = True, break_after: int | None = None,
              before_body: Callable[[], None] | None = None) -> Reply:
    """Chunked server-sent events; `break_after` drops the connection after that many events;
    `before_body` runs once the headers are sent (a server that then says nothing for a while)."""

    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        if before_body is not None:
            before_body()
        try:
            for i, event in enumerate(events):
                if break_after is not None and i == break_after:
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                chunk(b": keep-alive\n\n" if event is None else f"data: {json.dumps(event)}\n\n".encode())
            if done:
                chunk(b"data: [DONE]\n\n")
            h.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            h.close_connection = True

    return reply


HELLO = [delta("", None), delta("Hel"), None, delta("lo!"), delta("", "stop"),
         {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}]  # fmt: skip


def test_429_is_retried_then_streams_with_the_key_from_the_environment(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTE_KEY", "sk-test")
    busy = json_reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
    server = fake(busy, sse_reply(HELLO), key="sk-test")
    gen = OpenAIRemote("f", {"base_url": server.url, "api_key_env": "REMOTE_KEY", "model": "m2", "max_retries": 1})
    gen.load()
    parts = list(gen.stream(chat("hi", seed=9, top_k=0, stop=("END",))))
    assert [p.text for p in parts] == ["Hel", "lo!", ""] and parts[-1].finish_reason == "stop"
    stats = parts[-1].stats
    assert (stats.prompt_tokens, stats.completion_tokens, stats.seed) == (7, 3, 9)
    assert len(server.posts) == 2
    path, body = server.posts[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m2" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "hi"}] and body["stream_options"] == {"include_usage": True}
    assert (body["seed"], body["top_k"], body["stop"], body["max_tokens"]) == (9, 0, ["END"], 256)
    assert "sk-test" not in json.dumps(gen.describe())


def test_429_that_persists_is_busy_with_the_servers_message(fake) -> None:
    busy = json_reply(429, {"error": {"message": "queue full"}})
    server = fake(busy, busy, busy)
    gen = OpenAIRemote("f", {"base_url": server.url, "max_retries": 2})
    gen.load()
    with pytest.raises(BusyError, match="queue full"):
        collect(gen, chat("hi"))
    assert len(server.posts) == 3


def test_a_connection_broken_mid_stream_fails_without_retrying(fake) -> None:
    server = fake(sse_reply(HELLO, break_after=3), sse_reply(HELLO))
    gen = OpenAIRemote("f", {"base_url": server.url, "max_retries": 3})
    gen.load()
    got = []
    with pytest.raises(GenerationFailedError, match="broke"):
        for chunk in gen.stream(chat("hi")):
            got.append(chunk.text)
    assert got == ["Hel"] and len(server.posts) == 1


def test_a_stream_that_just_ends_or_reports_an_error(fake) -> None:
    error = {"error": {"message": "CUDA out of memory", "type": "generation_failed"}}
    server = fake(sse_reply([delta("a")], done=False), sse_reply([delta("a"), error]))
    gen = OpenAIRemote("f", {"base_url": server.url})
    gen.load()
    with pytest.raises(GenerationFailedError, match="closed the stream before the reply was finished"):
        collect(gen, chat("hi"))
    with pytest.raises(GenerationFailedError, match="CUDA out of memory"):
        collect(gen, chat("hi"))


def test_cancel_while_the_server_is_silent(fake) -> None:
    cancel, answer, answered = threading.Event(), threading.Event(), threading.Event()

    def silence() -> None:
        # The stream has begun and the server says nothing: the user stops while the plugin waits in its read
        # (where only the watcher that shuts the socket can end it; stopping earlier is caught before the read,
        # so how soon this fires decides which path runs, never whether the test passes).
        threading.Timer(0.3, cancel.set).start()
        answer.wait(30)  # then it answers after all, unless the test is over first
        answered.set()

    server = fake(sse_reply(HELLO, before_body=silence))
    gen = OpenAIRemote("f", {"base_url": server.url})
    gen.load()
    try:
        text, last = collect(gen, chat("hi"), cancel)
        assert not answered.is_set()  # it ended on the Stop, not when the server spoke again
    finally:
        answer.set()
    assert text == "" and last.finish_reason == "cancelled" and last.stats.completion_tokens == 0


def test_prompts_use_completions_when_the_server_has_it(fake) -> None:
    text_events = [{"choices": [{"index": 0, "text": " there", "finish_reason": None}]},
                   {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}]  # fmt: skip
    server = fake(sse_reply(text_events), sse_reply(text_events))
    gen = OpenAIRemote("f", {"base_url": server.url})
    gen.load()
    text, last = collect(gen, TextRequest(prompt="Hi", params=SamplingParams(max_new_tokens=2)))
    assert text == " there" and last.finish_reason == "length" and last.stats.completion_tokens == 1
    assert server.posts[0][0] == "/v1/completions" and server.posts[0][1]["prompt"] == "Hi"
    base = OpenAIRemote("b", {"base_url": server.url, "chat": False})  # a base model: messages become a transcript
    base.load()
    assert not base.supports_chat()
    collect(base, chat("Hello"))
    assert server.posts[1][0] == "/v1/completions" and server.posts[1][1]["prompt"] == "User: Hello\nAssistant:"


def test_openais_own_sampling_fields_reach_the_server(fake) -> None:
    server = fake(sse_reply([delta("hi", "stop")]), sse_reply([delta("hi", "stop")]))
    gen = OpenAIRemote("f", {"base_url": server.url})
    gen.load()
    assert CAP_LOGIT_BIAS in gen.info.capabilities and gen.vocabulary_size is None  # the server checks the ids
    collect(gen, chat("Hello", logit_bias={42: -100, 7: 2.5}, presence_penalty=0.5, frequency_penalty=-1.0))
    body = server.posts[0][1]
    assert body["logit_bias"] == {"42": -100, "7": 2.5} and isinstance(body["logit_bias"]["42"], int)
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -1.0
    collect(gen, chat("Hello"))
    assert not {"logit_bias", "presence_penalty", "frequency_penalty"} & set(server.posts[1][1])  # sent when in use


def test_prompts_fall_back_to_chat_once_completions_is_missing(fake) -> None:
    server = fake(json_reply(404, {"detail": "Not Found"}), sse_reply(HELLO), sse_reply(HELLO))
    gen = OpenAIRemote("f", {"base_url": server.url})
    gen.load()
    prompt = TextRequest(prompt="Hi")
    assert collect(gen, prompt)[0] == "Hello!" and collect(gen, prompt)[0] == "Hello!"
    assert [p for p, _ in server.posts] == ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions"]
    assert server.posts[1][1]["messages"] == [{"role": "user", "content": "Hi"}]


def test_load_errors_a_person_can_act_on(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    server = fake(key="right")
    with pytest.raises(LoadFailedError, match="401 from server: check api_key"):
        OpenAIRemote("f", {"base_url": server.url, "api_key": "wrong"}).load()
    OpenAIRemote("f", {"base_url": server.url, "api_key": "right"}).load()
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(LoadFailedError, match="NO_SUCH_KEY_VAR"):
        OpenAIRemote("f", {"base_url": server.url, "api_key_env": "NO_SUCH_KEY_VAR"}).load()
    with pytest.raises(LoadFailedError, match="ends in /v1"):
        OpenAIRemote("f", {"base_url": server.url.removesuffix("/v1")}).load()
    for bad in ({"base_url": "localhost:8000"}, {"base_url": server.url, "api_key": "a", "api_key_env": "B"},
                {"base_url": server.url, "temperature": 1}):
        with pytest.raises(InvalidOptionsError):
            OpenAIRemote("f", bad)


def test_a_server_that_ignores_stream_true_still_works(fake) -> None:
    whole = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "all at once"}, "finish_reason": "length"}],
             "usage": {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}}  # fmt: skip
    gen = OpenAIRemote("f", {"base_url": fake(json_reply(200, whole)).url})
    gen.load()
    text, last = collect(gen, chat("hi"))
    assert text == "all at once" and last.finish_reason == "length" and last.stats.completion_tokens == 3
