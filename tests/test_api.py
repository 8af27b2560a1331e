"""The HTTP API on a running in-process server, through the official openai client and httpx."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import free_port
from webui.server import launch


@pytest.fixture
def server(make_ctx):
    ctx = make_ctx({"fake": {"words": 6}, "slow": {"words": 500, "delay_s": 0.01}, "broken": {"fail_after": 0}},
                   port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, demo.local_url.rstrip("/")
    demo.close()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_text_models(server) -> None:
    _, url = server
    ids = [m.id for m in client(url).models.list().data]
    assert ids == ["fake", "slow", "broken"]


def test_non_streaming_completion_with_usage(server) -> None:
    ctx, url = server
    r = client(url).chat.completions.create(
        model="fake", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hello"}],
        temperature=0, max_tokens=50, seed=5,
    )
    assert r.choices[0].message.content == "".join(f"w{i}(hello) " for i in range(6))
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == r.usage.prompt_tokens + 6
    from storage import repository as repo

    with ctx.store.begin() as s:
        gen = repo.generations_of(s, ctx.default_owner)[0]
    assert gen.source == "api" and gen.outcome == "ok" and gen.params["max_new_tokens"] == 50 and gen.seed == 5


def test_streaming_completion(server) -> None:
    _, url = server
    stream = client(url).chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "yo"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"w{i}(yo) " for i in range(6))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_max_tokens_gives_length_finish(server) -> None:
    _, url = server
    r = client(url).chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"model": "nope"}, 404, "Unknown model"),
        ({"temperature": 5}, 400, "temperature"),
        ({"max_tokens": -1}, 400, "max_tokens"),
        ({"messages": []}, 400, "messages"),
        ({"n": 0}, 400, "'n'"),
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, kwargs, status, words) -> None:
    _, url = server
    args = {"model": "fake", "messages": [{"role": "user", "content": "x"}], **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client(url).chat.completions.create(**args)
    assert info.value.status_code == status
    assert words in info.value.body["message"]


def test_invalid_json_and_generation_failure(server) -> None:
    _, url = server
    r = httpx.post(url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(openai.InternalServerError) as info:
        client(url).chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert "on purpose" in info.value.body["message"]
    # the server keeps serving
    assert client(url).chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}]).choices


def test_client_disconnect_cancels_generation(server) -> None:
    ctx, url = server
    import time

    with httpx.stream("POST", url + "/v1/chat/completions",
                      json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "stream": True}) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i > 8:
                break
    from storage import repository as repo

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ctx.store.begin() as s:
            gen = repo.generations_of(s, ctx.default_owner)[0]
        if gen.outcome != "running":
            break
        time.sleep(0.1)
    assert gen.outcome == "cancelled"


def test_read_api_lists_and_returns_chats(server) -> None:
    ctx, url = server
    from webui.services import chat as svc

    st = svc.reply_settings(ctx, "fake", {}, "")
    view = svc.add_user_message(ctx, ctx.default_owner, None, "stored chat", st)
    list(svc.stream_reply(ctx, ctx.default_owner, view.id, st))
    listed = httpx.get(url + "/api/chats").json()["data"]
    assert [c["title"] for c in listed] == ["stored chat"]
    full = httpx.get(url + f"/api/chats/{view.id}").json()
    assert [m["role"] for m in full["visible"]] == ["user", "assistant"] and len(full["messages"]) == 2
    missing = httpx.get(url + "/api/chats/deadbeef")
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(url + "/api/chats", params={"q": "zzz"}).json()["data"] == []
