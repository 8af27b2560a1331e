"""Presets through the page (gradio_client against a launched app, fake model): a preset chosen in Chat
changes the parameters sent, as the generation record shows; a preset saved on the page is the person's."""

from __future__ import annotations

import pytest
from gradio_client import Client

from storage import repository as repo
from tests.conftest import free_port
from webui.server import launch
from webui.services import presets
from webui.tabs.sampler import NAMES


@pytest.fixture
def app(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"quick": {"words": 5}}, port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, Client(demo.local_url, verbose=False)
    demo.close()


def records(ctx) -> list[dict]:  # type: ignore[no-untyped-def]
    with ctx.store.begin() as s:
        return [g.params for g in reversed(repo.generations_of(s, ctx.default_owner))]  # oldest first


def test_a_preset_chosen_in_chat_changes_the_sent_parameters(app) -> None:  # type: ignore[no-untyped-def]
    ctx, client = app
    *values, status = client.predict("Creative", api_name="/chat_choose_preset")
    assert len(values) == len(NAMES) and "Creative" in status
    shown = dict(zip(NAMES, values, strict=True))
    creative = presets.BUILTIN["Creative"]
    assert shown["temperature"] == creative["temperature"] and shown["xtc_probability"] == creative["xtc_probability"]
    client.predict("quick", "", "hello", *values, "Creative", api_name="/send")
    client.predict("quick", "", *values, "Creative", api_name="/reply")
    values[NAMES.index("temperature")] = 0.25  # a single value changed after choosing the preset
    client.predict("quick", "", "again", *values, "Creative", api_name="/send")
    client.predict("quick", "", *values, "Creative", api_name="/reply")
    *balanced, _ = client.predict("Balanced", api_name="/chat_choose_preset")
    client.predict("quick", "", "and now", *balanced, "Balanced", api_name="/send")
    client.predict("quick", "", *balanced, "Balanced", api_name="/reply")
    first, second, third = records(ctx)
    assert first["preset"] == "Creative" and first["temperature"] == 1.0
    assert first["xtc_probability"] == 0.5 and first["dry_multiplier"] == 0.8 and first["top_k"] == 0
    assert second["temperature"] == 0.25 and second["xtc_probability"] == 0.5
    assert third["preset"] == "Balanced" and third["xtc_probability"] == 0.0 and third["top_k"] == 50
    chat_id = client.predict("", api_name="/list_chats")["value"]
    with ctx.store.begin() as s:
        assert repo.get_session(s, ctx.default_owner, chat_id).settings["preset"] == "Balanced"


def test_a_preset_saved_on_the_page_is_listed_and_loads(app) -> None:  # type: ignore[no-untyped-def]
    ctx, client = app
    *values, _ = client.predict("Deterministic", api_name="/chat_choose_preset")
    values[NAMES.index("top_k")] = 17
    by_name = dict(zip(NAMES, values, strict=True))
    dropdown, status = client.predict(*values, "Mine", api_name="/chat_save_preset")
    assert "Mine" in status
    assert presets.get_preset(ctx, ctx.default_owner, "Mine").params["top_k"] == 17
    *loaded, _ = client.predict("Mine", api_name="/story_choose_preset")  # the Story tab sees it too
    assert dict(zip(NAMES, loaded, strict=True))["top_k"] == by_name["top_k"]
    with pytest.raises(Exception, match="built-in"):
        client.predict(*values, "Balanced", api_name="/chat_save_preset")
