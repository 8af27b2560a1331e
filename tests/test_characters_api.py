"""The API's `character` and `persona` extension fields, through the official openai client (extra_body)."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import free_port
from tests.test_characters import (
    card_json,
    fake_plugin,  # noqa: F401 (the recording fake, overriding conftest's)
)
from webui.server import launch
from webui.services import characters as chars
from webui.services import chat as chat_svc


@pytest.fixture
def server(make_ctx):
    ctx = make_ctx({"fake": {"words": 4}}, port=free_port())
    demo = launch(ctx, quiet=True)
    yield ctx, openai.OpenAI(base_url=demo.local_url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=30)
    demo.close()


def test_a_script_gets_what_the_page_sends(server, fake_plugin) -> None:  # noqa: F811
    ctx, client = server
    owner = ctx.default_owner
    cid = chars.import_card(ctx, owner, json.dumps(card_json()).encode()).id
    chars.save_persona(ctx, owner, None, "Ann", "{{user}} is lost.")
    # the page: a chat with the character, one message
    chat_id = chars.start_chat(ctx, owner, cid)
    st = chat_svc.reply_settings(ctx, "fake", {"temperature": 0}, "")
    chat_svc.add_user_message(ctx, owner, chat_id, "Where am I?", st)
    list(chat_svc.stream_reply(ctx, owner, chat_id, st))
    page = fake_plugin.requests[-1].messages
    # a script: the same conversation, stateless, naming the character
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Where am I?"}],
                                       temperature=0, extra_body={"character": "Seraphina"})
    assert r.choices[0].message.content
    assert fake_plugin.requests[-1].messages == page
    # by id and with a named persona
    client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"character": cid, "persona": "Ann"})
    assert "Welcome, Ann." in fake_plugin.requests[-1].messages[1].content


@pytest.mark.parametrize("extra, param, words", [
    ({"character": "Nobody"}, "character", "no character named"),
    ({"character": "Seraphina", "persona": "Ghost"}, "persona", "no persona named"),
    ({"persona": "Ann"}, "persona", "together with 'character'"),
    ({"character": 5}, "character", "expected a string"),
])
def test_unknown_names_are_refused_naming_the_field(server, extra, param, words) -> None:
    ctx, client = server
    chars.import_card(ctx, ctx.default_owner, json.dumps(card_json()).encode())
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}], extra_body=extra)
    body = err.value.body
    assert body["param"] == param and words in body["message"]
