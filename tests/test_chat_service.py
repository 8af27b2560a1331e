"""Chat use cases with a scripted fake generator: persistence, stop, errors, branches, export."""

from __future__ import annotations

import json
import threading

import pytest

from generators.base import GenerationFailedError, InvalidOptionsError, UnknownGeneratorError
from storage import repository as repo
from webui.services import chat as svc

OWNER = "local"


def settings(ctx, model: str = "fake", **params):
    return svc.reply_settings(ctx, model, {"temperature": 0, **params}, "Be brief.")


def say(ctx, text: str, chat_id: str | None = None, model: str = "fake", cancel=None):
    st = settings(ctx, model)
    view = svc.add_user_message(ctx, OWNER, chat_id, text, st)
    views = list(svc.stream_reply(ctx, OWNER, view.id, st, cancel))
    return views


def test_send_streams_and_persists_the_turn(make_ctx) -> None:
    ctx = make_ctx()
    views = say(ctx, "hello world")
    assert len(views) > 5  # the reply grows view by view
    final = views[-1]
    assert [m.role for m in final.messages] == ["user", "assistant"]
    assert final.messages[-1].content.startswith("w0(hello wo)") and final.messages[-1].status == "ok"
    stored = svc.get_chat(ctx, OWNER, final.id)
    assert stored.messages == final.messages
    assert stored.title == "hello world" and stored.settings["system_prompt"] == "Be brief."
    with ctx.store.begin() as s:
        gen = repo.generations_of(s, OWNER, final.id)[0]
        assert gen.outcome == "ok" and gen.completion_tokens == 12 and gen.params["temperature"] == 0


def test_stop_keeps_the_partial_reply(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 200, "delay_s": 0.01}})
    cancel = threading.Event()
    st = settings(ctx)
    chat = svc.add_user_message(ctx, OWNER, None, "long one", st)
    shown = ""
    for i, view in enumerate(svc.stream_reply(ctx, OWNER, chat.id, st, cancel)):
        shown = view.messages[-1].content
        if i == 5:
            cancel.set()
    stored = svc.get_chat(ctx, OWNER, chat.id).messages[-1]
    assert stored.status == "cancelled" and stored.content == shown and 0 < len(shown)
    assert "w199" not in shown


def test_partial_reply_reaches_the_database_while_streaming(make_ctx, monkeypatch) -> None:
    monkeypatch.setattr("webui.services.generation.SAVE_EVERY_S", 0.0)
    ctx = make_ctx({"fake": {"words": 50}})
    st = settings(ctx)
    chat = svc.add_user_message(ctx, OWNER, None, "watch me", st)
    stream = svc.stream_reply(ctx, OWNER, chat.id, st)
    for _ in range(10):
        view = next(stream)
    stored = svc.get_chat(ctx, OWNER, chat.id).messages[-1]
    assert stored.status == "streaming" and stored.content and view.messages[-1].content.startswith(stored.content)
    stream.close()  # the client went away: what was shown is kept, marked stopped
    assert svc.get_chat(ctx, OWNER, chat.id).messages[-1].status == "cancelled"


def test_generation_error_is_recorded_and_the_app_keeps_serving(make_ctx) -> None:
    ctx = make_ctx({"broken": {"fail_after": 3}, "fake": {}})
    with pytest.raises(GenerationFailedError, match="on purpose"):
        say(ctx, "hi", model="broken")
    chat = svc.list_chats(ctx, OWNER)[0]
    stored = svc.get_chat(ctx, OWNER, chat.id)
    assert stored.messages[0].content == "hi"  # the user's message is never lost
    assert stored.messages[-1].status == "error" and stored.messages[-1].content.startswith("w0")
    # Regenerate with a working model: the failed reply stays as an alternative.
    st = settings(ctx, "fake")
    svc.prepare_regenerate(ctx, OWNER, chat.id)
    final = list(svc.stream_reply(ctx, OWNER, chat.id, st))[-1]
    assert final.messages[-1].status == "ok" and (final.messages[-1].branch, final.messages[-1].branches) == (2, 2)
    with ctx.store.begin() as s:
        outcomes = sorted(g.outcome for g in repo.generations_of(s, OWNER, chat.id))
    assert outcomes == ["error", "ok"]


def test_regenerate_keeps_the_earlier_reply_as_an_alternative(make_ctx) -> None:
    ctx = make_ctx()
    first = say(ctx, "question")[-1]
    svc.prepare_regenerate(ctx, OWNER, first.id)
    second = list(svc.stream_reply(ctx, OWNER, first.id, settings(ctx)))[-1]
    reply = second.messages[-1]
    assert (reply.branch, reply.branches) == (2, 2) and len(second.messages) == 2
    flipped = svc.switch_branch(ctx, OWNER, first.id, reply.id, -1)
    assert flipped.messages[-1].id == first.messages[-1].id and flipped.focus == first.messages[-1].id


def test_edit_creates_a_branch_and_keeps_the_original(make_ctx) -> None:
    ctx = make_ctx()
    v1 = say(ctx, "original question")[-1]
    v2 = say(ctx, "follow up", v1.id)[-1]
    edited = svc.edit_message(ctx, OWNER, v2.id, v2.messages[2].id, "better follow up")
    final = list(svc.stream_reply(ctx, OWNER, v2.id, settings(ctx)))[-1]
    assert [m.content for m in final.messages[:3]] == ["original question", v1.messages[1].content, "better follow up"]
    assert (final.messages[2].branch, final.messages[2].branches) == (2, 2)
    back = svc.switch_branch(ctx, OWNER, v2.id, final.messages[2].id, -1)
    assert back.messages[2].content == "follow up" and back.messages[3].content == v2.messages[3].content
    assert edited.notice
    with pytest.raises(InvalidOptionsError, match="Only your own messages"):
        svc.edit_message(ctx, OWNER, v2.id, v2.messages[1].id, "x")


@pytest.mark.parametrize("text", ["", "   \n "])
def test_empty_message_is_refused_and_nothing_is_saved(make_ctx, text: str) -> None:
    ctx = make_ctx()
    with pytest.raises(InvalidOptionsError, match="Type a message"):
        svc.add_user_message(ctx, OWNER, None, text, settings(ctx))
    assert svc.list_chats(ctx, OWNER) == []


def test_bad_settings_are_refused_with_a_readable_message(make_ctx) -> None:
    ctx = make_ctx()
    with pytest.raises(UnknownGeneratorError, match="Available models: fake"):
        svc.reply_settings(ctx, "gpt-99", {}, "")
    with pytest.raises(InvalidOptionsError, match="max_new_tokens"):
        svc.reply_settings(ctx, "fake", {"max_new_tokens": 0}, "")
    with pytest.raises(InvalidOptionsError, match="top_p"):
        svc.reply_settings(ctx, "fake", {"top_p": float("nan")}, "")


def test_another_owner_cannot_touch_a_chat(make_ctx) -> None:
    ctx = make_ctx()
    chat = say(ctx, "mine")[-1]
    for call in (lambda: svc.get_chat(ctx, "eve", chat.id), lambda: svc.delete_chat(ctx, "eve", chat.id),
                 lambda: svc.rename_chat(ctx, "eve", chat.id, "pwned"), lambda: svc.export_json(ctx, "eve", chat.id)):
        with pytest.raises(repo.NotFoundError):
            call()
    assert svc.list_chats(ctx, "eve") == [] and svc.get_chat(ctx, OWNER, chat.id).title == "mine"


def test_list_search_rename_delete(make_ctx) -> None:
    ctx = make_ctx()
    a = say(ctx, "about cats")[-1]
    b = say(ctx, "about dogs")[-1]
    assert [c.id for c in svc.list_chats(ctx, OWNER)] == [b.id, a.id]
    assert [c.id for c in svc.list_chats(ctx, OWNER, "CATS")] == [a.id]
    svc.rename_chat(ctx, OWNER, a.id, "Feline matters")
    assert svc.list_chats(ctx, OWNER, "feline")[0].id == a.id
    with pytest.raises(InvalidOptionsError):
        svc.rename_chat(ctx, OWNER, a.id, "  ")
    svc.delete_chat(ctx, OWNER, a.id)
    assert [c.id for c in svc.list_chats(ctx, OWNER)] == [b.id]


def test_export_markdown_and_json_then_import(make_ctx) -> None:
    ctx = make_ctx()
    chat = say(ctx, "export me")[-1]
    svc.prepare_regenerate(ctx, OWNER, chat.id)
    list(svc.stream_reply(ctx, OWNER, chat.id, settings(ctx)))
    md = svc.export_markdown(ctx, OWNER, chat.id)
    assert md.startswith("# export me") and "### You" in md and "Be brief." in md
    data = svc.export_json(ctx, OWNER, chat.id)
    assert len(data["messages"]) == 3  # both alternatives
    imported = svc.import_json(ctx, OWNER, json.dumps(data).encode())
    assert imported.id != chat.id and [m.content for m in imported.messages] == [
        m.content for m in svc.get_chat(ctx, OWNER, chat.id).messages
    ]
    with pytest.raises(InvalidOptionsError, match="not valid JSON"):
        svc.import_json(ctx, OWNER, b"\xff\xfe not json")
    with pytest.raises(InvalidOptionsError, match="not an AIGC Studio export"):
        svc.import_json(ctx, OWNER, b'{"hello": 1}')


def test_dropped_turns_are_announced(make_ctx, monkeypatch) -> None:
    from generators.base import GenerationStats, TextChunk

    ctx = make_ctx()
    gen = ctx.registry.get("fake")

    def stream(request, cancel=None):
        yield TextChunk("ok")
        yield TextChunk("", "stop", GenerationStats(10, 1, 0, 0.1, 10.0, dropped_messages=4))

    monkeypatch.setattr(gen, "stream", stream)
    final = say(ctx, "long history")[-1]
    assert "4 oldest message(s) were left out" in final.notice


def test_no_new_message_while_a_reply_is_being_written(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 50}})
    st = settings(ctx)
    chat = svc.add_user_message(ctx, OWNER, None, "first", st)
    stream = svc.stream_reply(ctx, OWNER, chat.id, st)
    next(stream)
    for call in (lambda: svc.add_user_message(ctx, OWNER, chat.id, "second", st),
                 lambda: svc.switch_branch(ctx, OWNER, chat.id, chat.messages[0].id, 1),
                 lambda: svc.prepare_regenerate(ctx, OWNER, chat.id)):
        with pytest.raises(InvalidOptionsError, match="still being written"):
            call()
    list(stream)
    assert svc.add_user_message(ctx, OWNER, chat.id, "second", st).messages[-1].content == "second"
