"""Bad-input fuzzing (hypothesis) of the services and the HTTP API: wrong types, huge and negative
numbers, NaN, lone surrogates, very long strings, path- and SQL-like text. Always a clear error (a
StudioError / a 4xx with a message), never a 500 or a traceback, and never a changed row."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from generators.base import StudioError
from storage.db import StorageError
from storage.models import Generation, ImageRecord, Message, SessionRecord, StoryPassage
from webui.api import EXCEPTION_HANDLERS, build_router
from webui.services import chat, images, story
from webui.services.story_values import story_settings

NASTY_TEXT = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "../../etc/passwd", "/etc/shadow", "C:\\Windows\\win.ini",
                     "'; DROP TABLE sessions; --", "\" OR 1=1 --", "%s%n%x", "{{7*7}}", "<script>alert(1)</script>",
                     "\u202e\u0000\ufeff", "x" * 200_001, "🙂" * 10, "NaN", "-1", "1e309"]),
)
NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([math.nan, math.inf, -math.inf, -1, 0, 2**63, 10**100]))
ANY_VALUE = st.one_of(st.none(), st.booleans(), NUMBERS, NASTY_TEXT, st.lists(st.integers(), max_size=3),
                      st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
PARAM_KEYS = st.sampled_from(["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "seed",
                              "stop", "bogus", "truncation"])
PARAMS = st.one_of(st.dictionaries(PARAM_KEYS, ANY_VALUE, max_size=4), ANY_VALUE)

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"quick": {"words": 3}}, images=True, max_prompt_chars=100_000)


def counts(ctx: Any) -> tuple[int, ...]:
    with ctx.store.begin() as s:
        return tuple(s.scalar(select(func.count()).select_from(m))
                     for m in (SessionRecord, Message, StoryPassage, Generation, ImageRecord))


def outcome(fn: Any) -> tuple[bool, Any]:
    """(True, None) if fn raised a person-readable error, (False, its result) if it succeeded. Anything else
    (a TypeError, a KeyError …) fails the test."""
    try:
        result = fn()
    except (StudioError, StorageError) as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return True, None
    return False, result


def refused_cleanly(fn: Any) -> bool:
    return outcome(fn)[0]


def grew(before: tuple[int, ...], after: tuple[int, ...], **by: int) -> bool:
    """Whether exactly the named tables grew by the given rows (sessions, messages, passages, generations, images)."""
    names = ("sessions", "messages", "passages", "generations", "images")
    return after == tuple(b + by.get(n, 0) for n, b in zip(names, before, strict=True))


@FUZZ
@given(text=st.one_of(NASTY_TEXT, ANY_VALUE), params=PARAMS, model=st.one_of(st.just("quick"), NASTY_TEXT))
@example(text=" <b>Hi</b> 'there' 🙂\n", params={"temperature": 0.5}, model="quick")  # accepted, every run
def test_chat_services(ctx, text, params, model) -> None:
    before = counts(ctx)
    refused, view = outcome(lambda: chat.add_user_message(
        ctx, "local", None, text, chat.reply_settings(ctx, model, params if isinstance(params, dict) else {"x": params})))
    if refused:
        assert counts(ctx) == before
        return
    # accepted: a new chat holding the message as typed (trimmed), and nothing else
    assert grew(before, counts(ctx), sessions=1, messages=1)
    saved = chat.get_chat(ctx, "local", view.id).messages
    assert [(m.role, m.content) for m in saved] == [("user", text.strip())]


@FUZZ
@given(title=ANY_VALUE, opening=ANY_VALUE, params=PARAMS, text=ANY_VALUE)
@example(title=" <Night> ", opening="It was dark.", params={"seed": 3}, text=" <i>Then</i> rain.\n")  # accepted
def test_story_services(ctx, title, opening, params, text) -> None:
    before = counts(ctx)

    def create() -> Any:
        return story.create_story(ctx, "local", title, story_settings(ctx, "quick", params if isinstance(params, dict) else {}),
                                  opening)

    refused, made = outcome(create)
    if refused:
        assert counts(ctx) == before
        return
    # accepted: one story, its opening (if any) its only passage, its title as given (or "Untitled story")
    opened = bool(opening and opening.strip())
    assert grew(before, counts(ctx), sessions=1, passages=int(opened))
    assert [p.text for p in story.get_story(ctx, "local", made.id).passages] == ([opening] if opened else [])
    assert made.title == ((title or "").strip()[:200] or "Untitled story")
    before = counts(ctx)
    refused, view = outcome(lambda: story.write(ctx, "local", made.id, text))
    if refused:
        assert counts(ctx) == before
        return
    assert grew(before, counts(ctx), passages=1)
    assert view.passages[-1].author == "user" and view.passages[-1].text in (text, " " + text)


@FUZZ
@given(label=ANY_VALUE, seed=ANY_VALUE, count=ANY_VALUE, params=PARAMS, model=st.one_of(st.just("gan-mnist32"), NASTY_TEXT))
@example(label=3, seed=2**32 - 1, count=2, params={}, model="gan-mnist32")  # accepted: the seeds wrap around
def test_image_services(ctx, label, seed, count, params, model) -> None:
    before = counts(ctx)
    refused, result = outcome(lambda: images.generate(ctx, "local", model, label, seed, count, params if isinstance(
        params, dict) else {"truncation": params}))
    if refused:
        assert counts(ctx) == before
    else:  # accepted: every image saved once, on disk, from consecutive seeds
        made = result.images
        assert made and grew(before, counts(ctx), generations=1, images=len(made))
        assert all(i.path.is_file() and i.model == model for i in made)
        assert [i.seed for i in made] == [(made[0].seed + k) % 2**32 for k in range(len(made))]
    assert refused_cleanly(lambda: images.get_image(ctx, "local", label if isinstance(label, str) else "x"))
    before = counts(ctx)
    refused, page = outcome(lambda: images.gallery(ctx, "local", model, label, count))
    assert counts(ctx) == before
    if not refused:
        assert len(page.images) <= page.total and 1 <= page.page <= page.pages


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@pytest.fixture
def api(ctx):  # type: ignore[no-untyped-def]
    app = FastAPI(routes=build_router(ctx).routes, exception_handlers=EXCEPTION_HANDLERS)
    return TestClient(app, raise_server_exceptions=False)


def assert_clear(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        # our routes answer OpenAI-shaped errors; the router itself (no such path / method) answers {"detail": …}
        message = body["error"]["message"] if "error" in body else body["detail"]
        assert message and "Traceback" not in response.text


MESSAGES = st.one_of(ANY_VALUE, st.lists(st.fixed_dictionaries({"role": st.one_of(st.sampled_from(
    ["user", "system", "assistant", "tool", "developer"]), ANY_VALUE), "content": ANY_VALUE}), max_size=3))


@FUZZ
@given(body=st.one_of(ANY_VALUE, st.fixed_dictionaries({"model": st.one_of(st.just("quick"), ANY_VALUE),
                                                        "messages": MESSAGES}, optional={
    "temperature": ANY_VALUE, "max_tokens": ANY_VALUE, "seed": ANY_VALUE, "stop": ANY_VALUE, "stream": ANY_VALUE,
    "top_p": ANY_VALUE})))
def test_chat_completions_api(ctx, api, body) -> None:
    before = counts(ctx)
    try:
        raw = json.dumps(body, allow_nan=True)
    except (UnicodeEncodeError, ValueError):
        raw = str(body)
    response = api.post("/v1/chat/completions", content=raw.encode("utf-8", "surrogatepass"),
                        headers={"content-type": "application/json"})
    assert_clear(response)
    if response.status_code >= 400:
        assert counts(ctx) == before
        return
    assert response.status_code == 200
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        assert isinstance(response.json()["choices"][0]["message"]["content"], str)
    assert grew(before, counts(ctx), generations=1)  # the reply was recorded, nothing else was kept


@FUZZ
@given(body=st.one_of(ANY_VALUE, st.fixed_dictionaries({"model": st.one_of(st.just("gan-mnist32"), ANY_VALUE)}, optional={
    "label": ANY_VALUE, "seed": ANY_VALUE, "count": ANY_VALUE, "params": PARAMS})),
       path=NASTY_TEXT.filter(lambda t: "\x00" not in t and len(t) < 1000 and is_utf8(t)))
def test_images_and_read_apis(ctx, api, body, path) -> None:
    before = counts(ctx)
    try:
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
    except (ValueError, UnicodeEncodeError):
        raw = b"\xff\xfe not json"
    response = api.post("/api/images", content=raw, headers={"content-type": "application/json"})
    assert_clear(response)
    if response.status_code >= 400:
        assert counts(ctx) == before
    else:
        made = response.json()["data"]
        assert made and counts(ctx)[4] == before[4] + len(made)
    from urllib.parse import quote

    for url in (f"/api/chats/{quote(path, safe='')}", f"/api/stories/{quote(path, safe='')}",
                f"/api/images/{quote(path, safe='')}", f"/api/images?page={quote(path, safe='')}",
                f"/api/images?label={quote(path, safe='')}", f"/api/chats?q={quote(path, safe='')}"):
        assert_clear(api.get(url))
    assert_clear(api.delete(f"/api/images/{quote(path, safe='')}"))
    assert counts(ctx)[4] == before[4] or response.status_code == 200


def test_invalid_utf8_bodies(api) -> None:
    for raw in (b"\xff\xfe\xfa", b'{"model": "quick", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}'):
        assert_clear(api.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}))
        assert_clear(api.post("/api/images", content=raw, headers={"content-type": "application/json"}))
