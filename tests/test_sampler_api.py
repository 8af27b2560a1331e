"""The sampler extensions (typical-p, DRY, XTC) and presets through the OpenAI client's `extra_body`:
the values reach the generation record, bad ones are refused naming the field."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from storage import repository as repo
from webui.api import EXCEPTION_HANDLERS, build_router

USER = [{"role": "user", "content": "hello"}]


@pytest.fixture
def http(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"fake": {"words": 4}})
    app = FastAPI(routes=build_router(ctx).routes, exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.ctx = ctx  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def client(http: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def recorded(http: TestClient) -> list[dict[str, Any]]:
    ctx = http.ctx  # type: ignore[attr-defined]
    with ctx.store.begin() as s:
        return [g.params for g in repo.generations_of(s, ctx.default_owner)]


EXTRA = {"typical_p": 0.9, "dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 3,
         "dry_sequence_breakers": ["\n", "#"], "xtc_threshold": 0.2, "xtc_probability": 0.5}


def test_extension_fields_reach_the_generation(client: openai.OpenAI, http: TestClient) -> None:
    client.chat.completions.create(model="fake", messages=USER, extra_body=EXTRA)  # type: ignore[arg-type]
    client.completions.create(model="fake", prompt="Once", extra_body=EXTRA)
    for params in recorded(http):
        assert {k: params[k] for k in EXTRA} == EXTRA
    client.chat.completions.create(model="fake", messages=USER)  # type: ignore[arg-type]
    plain = [p for p in recorded(http) if p["typical_p"] == 1.0]
    assert len(plain) == 1 and plain[0]["dry_multiplier"] == 0.0 and plain[0]["xtc_probability"] == 0.0  # off unless asked


@pytest.mark.parametrize("field, value, code", [
    ("typical_p", 1.5, "decimal_above_max_value"), ("dry_multiplier", -1, "decimal_below_min_value"),
    ("dry_allowed_length", 0.5, "invalid_type"), ("xtc_threshold", 0.9, "decimal_above_max_value"),
    ("dry_sequence_breakers", "\n", "invalid_type"), ("dry_sequence_breakers", [""], "invalid_value"),
])
def test_bad_extension_values_are_refused_naming_the_field(http: TestClient, field: str, value: Any, code: str) -> None:
    response = http.post("/v1/chat/completions", json={"model": "fake", "messages": USER, field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(field) and error["code"] == code and "Traceback" not in error["message"], error
    assert recorded(http) == []


def test_a_named_preset_sets_the_parameters_and_sent_fields_override_it(client: openai.OpenAI, http: TestClient) -> None:
    from webui.services import presets

    ctx = http.ctx  # type: ignore[attr-defined]
    client.chat.completions.create(model="fake", messages=USER, extra_body={"preset": "Creative"})  # type: ignore[arg-type]
    client.chat.completions.create(model="fake", messages=USER, temperature=0.3,  # type: ignore[arg-type]
                                   extra_body={"preset": "creative"})
    presets.save_preset(ctx, ctx.default_owner, "Mine", {"top_k": 7, "min_p": 0.2})
    presets.set_default_preset(ctx, ctx.default_owner, "fake", "Mine")
    client.completions.create(model="fake", prompt="Once", extra_body={"preset": "default"})
    third, second, first = recorded(http)  # newest first
    creative = presets.BUILTIN["Creative"]
    assert first["preset"] == "Creative" and first["temperature"] == 1.0
    assert first["xtc_probability"] == creative["xtc_probability"] and first["dry_multiplier"] == creative["dry_multiplier"]
    assert second["temperature"] == 0.3 and second["xtc_probability"] == creative["xtc_probability"]
    assert third["top_k"] == 7 and third["min_p"] == 0.2 and third["preset"] == "Mine"


def test_an_unknown_preset_is_refused_naming_the_field(client: openai.OpenAI, http: TestClient) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="fake", messages=USER, extra_body={"preset": "Nope"})  # type: ignore[arg-type]
    assert info.value.param == "preset" and "Balanced" in str(info.value.message)
    assert recorded(http) == []
