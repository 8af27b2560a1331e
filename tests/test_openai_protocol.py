"""The OpenAI API as its reference specifies it: one table row per rule.

Refusals are sent as raw HTTP (a client library would refuse to build most of them) and must come back
as OpenAI answers them: 400, `{"error": {message, type: invalid_request_error, param, code}}` with `param`
naming the field. Acceptances go through the official `openai` client. Both talk to the real routes over
ASGI (fake models: the rules are the API's, not a model's).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from webui.api import EXCEPTION_HANDLERS, build_router

USER = [{"role": "user", "content": "hello"}]


@contextlib.contextmanager
def served(ctx: Any) -> Iterator[TestClient]:
    """The API routes of `ctx` over ASGI; the client carries the context (`client.ctx`)."""
    app = FastAPI(routes=build_router(ctx).routes, exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.ctx = ctx  # type: ignore[attr-defined]
        yield client


def openai_client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


@pytest.fixture
def http(make_ctx):  # type: ignore[no-untyped-def]
    with served(make_ctx({"fake": {"words": 4}, "broken": {"fail_after": 1}, "long": {"words": 40}})) as client:
        yield client


@pytest.fixture
def client(http: TestClient) -> openai.OpenAI:
    return openai_client(http)


# ---------------------------------------------------------------- refusals: (endpoint, body changes, param, code)

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
REFUSED = [
    # wrong types
    ("string for a number", CHAT, {"temperature": "0.5"}, "temperature", "invalid_type"),
    ("string for an integer", CHAT, {"max_tokens": "10"}, "max_tokens", "invalid_type"),
    ("decimal for an integer", CHAT, {"n": 1.5}, "n", "invalid_type"),
    ("string for a boolean", CHAT, {"stream": "yes"}, "stream", "invalid_type"),
    ("number for stop", CHAT, {"stop": 5}, "stop", "invalid_type"),
    ("number inside a stop list", CHAT, {"stop": ["a", 3]}, "stop[1]", "invalid_type"),
    ("string seed", CHAT, {"seed": "7"}, "seed", "invalid_type"),
    ("content a number", CHAT, {"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_type"),
    ("messages not a list", CHAT, {"messages": "hi"}, "messages", "invalid_type"),
    ("logprobs not a boolean", CHAT, {"logprobs": 1}, "logprobs", "invalid_type"),
    ("completion logprobs not an integer", TEXT, {"logprobs": True}, "logprobs", "invalid_type"),
    ("prompt a number", TEXT, {"prompt": 5}, "prompt", "invalid_type"),
    # out of range
    ("temperature above 2", CHAT, {"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ("temperature below 0", CHAT, {"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ("top_p above 1", CHAT, {"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ("presence_penalty below -2", CHAT, {"presence_penalty": -3}, "presence_penalty", "decimal_below_min_value"),
    ("frequency_penalty above 2", CHAT, {"frequency_penalty": 2.1}, "frequency_penalty", "decimal_above_max_value"),
    ("n of 0", CHAT, {"n": 0}, "n", "integer_below_min_value"),
    ("n above 128", CHAT, {"n": 129}, "n", "integer_above_max_value"),
    ("max_tokens of 0 in chat", CHAT, {"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ("top_logprobs above 20", CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ("completion logprobs above 5", TEXT, {"logprobs": 6}, "logprobs", "integer_above_max_value"),
    ("five stop strings", CHAT, {"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ("no messages", CHAT, {"messages": []}, "messages", "empty_array"),
    ("logit_bias above 100", CHAT, {"logit_bias": {"5": 101}}, "logit_bias.5", "integer_above_max_value"),
    ("logit_bias below -100", TEXT, {"logit_bias": {"5": -101}}, "logit_bias.5", "integer_below_min_value"),
    ("logit_bias a decimal bias", CHAT, {"logit_bias": {"5": 0.5}}, "logit_bias.5", "invalid_type"),
    ("logit_bias not an object", CHAT, {"logit_bias": [5]}, "logit_bias", "invalid_type"),
    ("logit_bias keyed by a word", CHAT, {"logit_bias": {"hello": 5}}, "logit_bias", None),
    ("logit_bias keyed by a negative id", TEXT, {"logit_bias": {"-1": 5}}, "logit_bias", None),
    ("logit_bias on 301 tokens", CHAT, {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", None),
    ("logit_bias id outside the model's vocabulary", CHAT, {"logit_bias": {"1000": -100}}, "logit_bias", None),
    ("completion logit_bias id outside the vocabulary", TEXT, {"logit_bias": {"7": 1, "5000": 1}}, "logit_bias", None),
    ("logit_bias id outside every vocabulary", CHAT, {"logit_bias": {"9" * 40: 1}}, "logit_bias", None),
    # rules between fields
    ("stream_options without stream", CHAT, {"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ("stream_options with stream false", CHAT, {"stream": False, "stream_options": {}}, "stream_options", "invalid_value"),
    ("stream_options not an object", CHAT, {"stream": True, "stream_options": True}, "stream_options", "invalid_type"),
    ("max_tokens and max_completion_tokens", CHAT, {"max_tokens": 5, "max_completion_tokens": 5}, "max_tokens",
     "invalid_value"),
    ("top_logprobs without logprobs", CHAT, {"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ("best_of below n", TEXT, {"best_of": 2, "n": 3}, "best_of", "invalid_value"),
    ("suffix", TEXT, {"suffix": "end"}, "suffix", "invalid_value"),
    ("token-id prompt", TEXT, {"prompt": [1, 2, 3]}, "prompt", "invalid_type"),
    ("empty prompt list", TEXT, {"prompt": []}, "prompt", "empty_array"),
    # messages and content parts
    ("unknown role", CHAT, {"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "invalid_value"),
    ("tool message without a tool call", CHAT, {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
     "messages[0].role", "invalid_value"),
    ("user message without content", CHAT, {"messages": [{"role": "user"}]}, "messages[0].content",
     "missing_required_parameter"),
    ("content part of unknown type", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video", "video": "v"}]}]},
     "messages[0].content[1].type", "invalid_value"),
    ("text part without text", CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text", "missing_required_parameter"),
    ("image part without image_url", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url", "missing_required_parameter"),
    ("image_url without url", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]},
     "messages[0].content[0].image_url.url", "missing_required_parameter"),
    ("image_url with a bad detail", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png",
                                                                                    "detail": "huge"}}]}]},
     "messages[0].content[0].image_url.detail", "invalid_value"),
    ("an image to a model that cannot see", CHAT,
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]},
     "messages[0].content[0].type", None),
    ("an image part in a system message", CHAT,
     {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     "messages[0].content[0].type", "invalid_value"),
    ("missing model field types", CHAT, {"model": 7}, "model", "invalid_type"),
    ("missing prompt", TEXT, {"prompt": None}, "prompt", "invalid_type"),
]


def base_body(endpoint: str) -> dict[str, Any]:
    return {"model": "fake", "messages": USER} if endpoint == CHAT else {"model": "fake", "prompt": "Once"}


@pytest.mark.parametrize("name, endpoint, changes, param, code", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_like_openai(http: TestClient, name: str, endpoint: str, changes: dict[str, Any], param: str,
                             code: str | None) -> None:
    body = {**base_body(endpoint), **changes}
    response = http.post(endpoint, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code), error
    assert param.split("[")[0].split(".")[0] in error["message"] or error["param"] == param
    assert len(error["message"]) > 20 and "Traceback" not in error["message"]
    with http.ctx.store.begin() as s:  # type: ignore[attr-defined]
        from storage import repository as repo

        assert repo.generations_of(s, http.ctx.default_owner) == []  # type: ignore[attr-defined]  # nothing half-saved


def test_missing_fields_and_bodies_that_are_not_objects(http: TestClient) -> None:
    for endpoint, body, param in ((CHAT, {"model": "fake"}, "messages"), (TEXT, {"model": "fake"}, "prompt")):
        error = http.post(endpoint, json=body).json()["error"]
        assert (error["param"], error["code"]) == (param, "missing_required_parameter")
        assert error["message"] == f"Missing required parameter: '{param}'."
    for raw in (b"{bad json", b"[1, 2]", b"", b"null"):
        response = http.post(CHAT, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_names_the_model(http: TestClient) -> None:
    response = http.post(CHAT, json={"model": "nope", "messages": USER})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found" and response.json()["error"]["param"] == "model"


def test_the_openai_client_sees_the_same_refusals(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake", messages=USER, temperature=3)  # type: ignore[arg-type]
    assert info.value.param == "temperature" and info.value.code == "decimal_above_max_value"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake", prompt="x", suffix="y")
    assert info.value.param == "suffix"


# ---------------------------------------------------------------- acceptances, through the openai client


def test_null_means_the_default(client: openai.OpenAI, http: TestClient) -> None:
    body = {"model": "fake", "messages": USER, "temperature": None, "top_p": None, "n": None, "stream": None,
            "stop": None, "max_tokens": None, "seed": None, "presence_penalty": None, "logprobs": None,
            "stream_options": None, "top_logprobs": None, "logit_bias": None, "user": None}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1 and response.json()["choices"][0]["logprobs"] is None


def test_n_choices_with_their_own_seeds(client: openai.OpenAI, http: TestClient) -> None:
    r = client.chat.completions.create(model="fake", messages=USER, n=3, seed=11)  # type: ignore[arg-type]
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content.startswith("w0(hello)") for c in r.choices)
    assert r.usage.completion_tokens == 12  # every choice counts; the prompt counts once
    from storage import repository as repo

    with http.ctx.store.begin() as s:  # type: ignore[attr-defined]
        seeds = sorted(g.seed for g in repo.generations_of(s, http.ctx.default_owner))  # type: ignore[attr-defined]
    assert seeds == [11, 12, 13]


@pytest.mark.parametrize("kwargs", [
    {"top_p": 0}, {"seed": -1}, {"seed": 2**63 - 1}, {"stop": "w2"}, {"stop": ["w9", "w2"]},
    {"presence_penalty": -2, "frequency_penalty": 2}, {"temperature": 2}, {"logit_bias": {"42": -100}},
    {"max_completion_tokens": 3}, {"user": "someone", "metadata": {"a": "b"}, "store": False},
])
def test_accepted_values(client: openai.OpenAI, kwargs: dict[str, Any]) -> None:
    r = client.chat.completions.create(model="fake", messages=USER, **kwargs)  # type: ignore[arg-type]
    assert r.choices[0].message.role == "assistant"


def test_system_only_conversation_and_content_parts(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="fake", messages=[{"role": "system", "content": "be brief"}])
    assert r.choices[0].message.content
    r = client.chat.completions.create(model="fake", messages=[
        {"role": "developer", "content": [{"type": "text", "text": "rules"}]},
        {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}])
    assert r.choices[0].message.content.startswith("w0(hello)")


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="fake", messages=USER, logprobs=True, top_logprobs=2, max_tokens=2)
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == ["w0(hello) ", "w1(hello) "]
    assert [c.logprob for c in content] == pytest.approx([-0.1, -0.2])
    assert [t.token for t in content[0].top_logprobs] == ["alt0", "alt1"]
    assert content[0].bytes == list(b"w0(hello) ")
    stream = client.chat.completions.create(model="fake", messages=USER, logprobs=True, max_tokens=2, stream=True)
    streamed = [t.token for chunk in stream for c in chunk.choices if c.logprobs for t in c.logprobs.content or []]
    assert streamed == ["w0(hello) ", "w1(hello) "]


def test_streamed_n_choices_interleave_by_index(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake", messages=USER, n=2, stream=True,
                                            stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    finishes = {}
    usage = None
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert texts[0] == texts[1] == "".join(f"w{i}(hello) " for i in range(4))
    assert finishes == {0: "stop", 1: "stop"} and usage.completion_tokens == 8


# ---------------------------------------------------------------- /v1/completions


def test_completions_prompt_list_n_echo(client: openai.OpenAI) -> None:
    r = client.completions.create(model="fake", prompt=["Once upon", "Far away"], n=2, echo=True, max_tokens=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == ["Once upon" + "w0(Once upo) w1(Once upo) "] * 2 + \
        ["Far away" + "w0(Far away) w1(Far away) "] * 2
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8


def test_completions_default_max_tokens_is_16(client: openai.OpenAI) -> None:
    r = client.completions.create(model="long", prompt="x")
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"
    assert r.choices[0].text == "".join(f"w{i}(x) " for i in range(16))


def test_completions_logprobs_with_echo_and_scoring_only(client: openai.OpenAI) -> None:
    r = client.completions.create(model="fake", prompt="a b", logprobs=1, echo=True, max_tokens=1)
    lp = r.choices[0].logprobs
    assert lp.tokens == ["a", " b", "w0(a b) "]
    assert lp.token_logprobs[0] is None and lp.token_logprobs[1:] == pytest.approx([-0.5, -0.1])
    assert lp.text_offset == [0, 1, 3] and lp.top_logprobs[0] is None and lp.top_logprobs[1] == {"alt0": -1.0}
    scored = client.completions.create(model="fake", prompt="a b c", logprobs=0, echo=True, max_tokens=0)
    assert scored.choices[0].text == "a b c" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.tokens == ["a", " b", " c"]


def test_completions_stream_and_best_of(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model="fake", prompt="go", max_tokens=3, stream=True, echo=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "go" + "w0(go) w1(go) w2(go) "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    best = client.completions.create(model="fake", prompt="go", max_tokens=2, best_of=3, n=2)
    assert [c.index for c in best.choices] == [0, 1]


def test_a_failing_choice_fails_the_request_cleanly(client: openai.OpenAI, http: TestClient) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="broken", messages=USER, n=2)
    assert info.value.body["type"] == "server_error" and "on purpose" in info.value.body["message"]
    from storage import repository as repo

    with http.ctx.store.begin() as s:  # type: ignore[attr-defined]
        outcomes = sorted(g.outcome for g in repo.generations_of(s, http.ctx.default_owner))  # type: ignore[attr-defined]
    assert "running" not in outcomes and "error" in outcomes


# ---------------------------------------------------------------- rate limit


def test_rate_limit_is_off_without_auth_and_says_when_to_retry(make_ctx) -> None:  # type: ignore[no-untyped-def]
    from webui.services.context import RateLimiter

    ctx = make_ctx({"fake": {"words": 1}})
    app = FastAPI(routes=build_router(ctx).routes, exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as http:
        for _ in range(70):  # above the 60 a minute that applies with accounts
            assert http.post(CHAT, json={"model": "fake", "messages": USER}).status_code == 200
    limited = make_ctx({"fake": {"words": 1}}, requests_per_minute=2)
    limited.rate = RateLimiter(2, clock=lambda: 100.0)
    app = FastAPI(routes=build_router(limited).routes, exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as http:
        statuses = [http.post(CHAT, json={"model": "fake", "messages": USER}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].headers["Retry-After"] == "60"
    error = statuses[2].json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded") and "60 s" in error["message"]


def test_the_lstm_is_reachable_on_the_completions_endpoint(make_ctx) -> None:  # type: ignore[no-untyped-def]
    from generators.text.char_lstm import CharLSTM

    ctx = make_ctx(real={"lstm-fortunes": (CharLSTM, {"weights": "builtin:lstm-fortunes"})})
    with served(ctx) as http:
        oa = openai_client(http)
        r = oa.completions.create(model="lstm-fortunes", prompt="You will", max_tokens=20, seed=1, echo=True, n=2)
        assert [c.text[:8] for c in r.choices] == ["You will"] * 2 and len(r.choices[0].text) > 8
        assert r.choices[0].text != r.choices[1].text  # seeds 1 and 2
        with pytest.raises(openai.BadRequestError) as info:  # it cannot score tokens
            oa.completions.create(model="lstm-fortunes", prompt="You", max_tokens=2, logprobs=1)
        assert info.value.param == "logprobs"
        # its tokens are its characters: logit_bias names them by their index in its vocabulary
        vocab = ctx.registry.get("lstm-fortunes").vocab
        forced = oa.completions.create(model="lstm-fortunes", prompt="You will", max_tokens=5, seed=1,
                                       logit_bias={str(vocab.index("z")): 100})
        assert forced.choices[0].text == "zzzzz"
        with pytest.raises(openai.BadRequestError) as info:
            oa.completions.create(model="lstm-fortunes", prompt="You", max_tokens=2, logit_bias={str(len(vocab)): -100})
        assert info.value.param == "logit_bias" and f"0 to {len(vocab) - 1}" in info.value.message


# ---------------------------------------------------------------- logit_bias on a real (tiny) model


@pytest.fixture
def tiny_api(make_ctx, tiny_model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """The tiny Llama as "tiny" (batching) and, without its chat template, as the base model "tiny-base"."""
    import shutil

    from generators.text.transformers_lm import TransformersLM

    base = shutil.copytree(tiny_model_dir, tmp_path / "tiny-base")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    for template in base.glob("chat_template.j*"):
        template.unlink()
    models = {"tiny": (TransformersLM, {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 4}),
              "tiny-base": (TransformersLM, {"source": str(base), "device": "cpu", "max_batch": 1})}
    with served(make_ctx(real=models)) as http:
        yield http


def test_logit_bias_bans_and_forces_tokens_through_the_openai_client(tiny_api: TestClient) -> None:
    import torch

    from generators.base import ChatMessage, TextRequest

    oa = openai_client(tiny_api)
    lm = tiny_api.ctx.registry.get("tiny")  # type: ignore[attr-defined]
    assert not lm.loaded
    with pytest.raises(openai.BadRequestError) as info:  # the ids are checked against the model's vocabulary
        oa.chat.completions.create(model="tiny", messages=USER, max_tokens=4,  # type: ignore[arg-type]
                                   logit_bias={"5": 1, "1000000": -100})
    assert info.value.param == "logit_bias" and "1000000" in info.value.message
    assert f"0 to {len(lm.tokenizer) - 1}" in info.value.message  # (it was loaded to say so)
    ids, _ = lm.encode(TextRequest(messages=(ChatMessage("user", "hello"),)))
    with torch.inference_mode():
        first_id = int(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())  # the greedy first token
    first = lm.tokenizer.decode([first_id])
    plain = oa.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=8,  # type: ignore[arg-type]
                                       logprobs=True)
    assert plain.choices[0].logprobs.content[0].token == first
    banned = oa.chat.completions.create(model="tiny", messages=USER, temperature=0, max_tokens=8, n=2,  # type: ignore[arg-type]
                                        logprobs=True, logit_bias={str(first_id): -100})
    tokens = [[t.token for t in c.logprobs.content] for c in banned.choices]
    assert tokens[0] == tokens[1] and first not in tokens[0]  # n=2 decoded as a batch, both rows banned
    assert banned.choices[0].message.content != plain.choices[0].message.content
    sea = lm.tokenizer.encode(" sea", add_special_tokens=False)[0]
    stream = oa.completions.create(model="tiny", prompt="Once upon a time", max_tokens=5, temperature=1.0, seed=7,
                                   stream=True, logit_bias={str(sea): 100})
    assert "".join(c.choices[0].text for c in stream if c.choices) == " sea" * 5


def test_completions_stop_and_a_base_model_on_a_real_model(tiny_api: TestClient) -> None:
    oa = openai_client(tiny_api)
    for model in ("tiny", "tiny-base"):
        plain = oa.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
        text = plain.choices[0].text
        assert len(text) >= 6 and plain.choices[0].finish_reason == "length"
        stop = text[len(text) // 2:len(text) // 2 + 3]
        for stops in (stop, ["never-in-there", stop]):
            r = oa.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stop=stops)
            assert (r.choices[0].text, r.choices[0].finish_reason) == (text[:text.find(stop)], "stop")
    base = tiny_api.ctx.registry.get("tiny-base")  # type: ignore[attr-defined]
    assert not base.supports_chat()  # a base model, reached on the completions endpoint


def test_penalties_and_logprobs_are_the_models_own_on_a_real_model(tiny_api: TestClient) -> None:
    oa = openai_client(tiny_api)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "the the the"}], "temperature": 0, "max_tokens": 16}
    plain = oa.chat.completions.create(**ask, logprobs=True, top_logprobs=2)  # type: ignore[call-overload]
    penalised = oa.chat.completions.create(**ask, presence_penalty=2, frequency_penalty=2)  # type: ignore[call-overload]
    assert penalised.choices[0].message.content != plain.choices[0].message.content  # applied, not ignored
    entries = plain.choices[0].logprobs.content
    assert len(entries) == plain.usage.completion_tokens and all(e.logprob <= 0 for e in entries)
    for e in entries:  # greedy: the chosen token is the likeliest of its alternatives, with its own logprob
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-5)
        assert e.top_logprobs[1].logprob <= e.top_logprobs[0].logprob
