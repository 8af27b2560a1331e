"""Exported chats and stories say they hold AI-generated text, and which passages a person wrote."""

from __future__ import annotations

import json

from webui.services import chat, story
from webui.services.disclosure import STUDIO

OWNER = "local"


def run(it):  # type: ignore[no-untyped-def]
    out = None
    for out in it:  # noqa: B007
        pass
    return out


def a_story(ctx):  # type: ignore[no-untyped-def]
    settings = story.story_settings(ctx, "fake", {"max_new_tokens": 16, "seed": 1}, premise="A heist.")
    view = story.create_story(ctx, OWNER, "Heist", settings)
    story.write(ctx, OWNER, view.id, "Mara opened the door.")
    run(story.continue_story(ctx, OWNER, view.id, settings))
    return view.id


def test_story_exports_carry_the_label_and_who_wrote_each_passage(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 4}})
    sid = a_story(ctx)
    md = story.export_markdown(ctx, OWNER, sid)
    lines = md.splitlines()
    assert lines[0] == "# Heist" and lines[2].startswith("> **AI-generated content: this story contains text written "
                                                         "by a language model (fake)")
    assert "## Provenance" in md and "| 1 | person |" in md and "| 2 | model (fake) |" in md
    assert "Mara opened the door." in md and f"Exported from {STUDIO}" in md
    text = story.export_text(ctx, OWNER, sid)
    assert text.startswith("AI-GENERATED CONTENT") and "PROVENANCE" in text and "2. model (fake)" in text
    data = story.export_json(ctx, OWNER, sid)
    prov = data["provenance"]
    assert prov["ai_generated"] and prov["models"] == ["fake"] and prov["kind"] == "story"
    assert [p["author"] for p in prov["passages"]] == ["person", "model"]
    assert prov["characters"]["person"] == len("Mara opened the door.") and prov["characters"]["model"] > 0
    assert all(p["created_at"] for p in prov["passages"]) and prov["exported_at"]
    again = story.import_json(ctx, OWNER, json.dumps(data).encode())  # the block does not disturb the import
    assert again.text == story.get_story(ctx, OWNER, sid).text


def test_chat_exports_carry_the_label_and_the_block(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 4}})
    view = chat.add_user_message(ctx, OWNER, None, "hello there", chat.reply_settings(ctx, "fake", {}))
    run(chat.stream_reply(ctx, OWNER, view.id, chat.reply_settings(ctx, "fake", {})))
    md = chat.export_markdown(ctx, OWNER, view.id)
    assert md.splitlines()[0].startswith("# ") and "> **AI-generated content: this chat contains text" in md
    assert "| 1 | person |" in md and "| 2 | model (fake) |" in md
    data = chat.export_json(ctx, OWNER, view.id)
    assert data["provenance"]["models"] == ["fake"] and [p["author"] for p in data["provenance"]["passages"]] == [
        "person", "model"]
    assert chat.import_json(ctx, OWNER, json.dumps(data).encode()).id != view.id


def test_a_story_only_a_person_wrote_says_so(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 4}})
    settings = story.story_settings(ctx, "fake", {"max_new_tokens": 16})
    view = story.create_story(ctx, OWNER, "Mine", settings)
    story.write(ctx, OWNER, view.id, "All mine.")
    data = story.export_json(ctx, OWNER, view.id)["provenance"]
    assert not data["ai_generated"] and data["label"].startswith("This story holds no text written by a model")
