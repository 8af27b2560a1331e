"""The prompt library: variables, filling, per-owner rows, all-or-nothing import, export round trip."""

from __future__ import annotations

import json

import pytest

from generators.base import InvalidOptionsError
from storage.repository import NotFoundError
from webui.services import prompt_library as lib


def test_variables_are_found_in_order_and_character_macros_are_not_variables() -> None:
    text = "Summarize {{ text }} in {{words}} words for {{user}}; then {{text}} again as {{char}}."
    assert lib.variables(text) == ("text", "words")
    assert lib.fill(text, {"text": "the {{words}} book", "words": "50"}) == \
        "Summarize the {{words}} book in 50 words for {{user}}; then the {{words}} book again as {{char}}."
    with pytest.raises(InvalidOptionsError, match="“words”"):
        lib.fill(text, {"text": "x", "words": " "})


def test_save_list_edit_delete_per_owner(make_ctx) -> None:
    ctx = make_ctx()
    p = lib.save_prompt(ctx, "alice", None, "Translate", "Translate into {{language}}:\n\n{{text}}")
    assert p.variables == ("language", "text")
    assert [x.name for x in lib.list_prompts(ctx, "alice", "transl")] == ["Translate"]
    assert lib.list_prompts(ctx, "bob") == []
    with pytest.raises(NotFoundError):
        lib.get_prompt(ctx, "bob", p.id)
    with pytest.raises(NotFoundError):
        lib.save_prompt(ctx, "bob", p.id, "mine", "now")
    with pytest.raises(NotFoundError):
        lib.delete_prompt(ctx, "bob", p.id)
    lib.save_prompt(ctx, "alice", p.id, "Translate", "Into {{language}}: {{text}}")
    assert lib.get_prompt(ctx, "alice", p.id).text == "Into {{language}}: {{text}}"
    with pytest.raises(InvalidOptionsError, match="needs a name"):
        lib.save_prompt(ctx, "alice", None, " ", "x")
    with pytest.raises(InvalidOptionsError, match="at most 8"):
        lib.save_prompt(ctx, "alice", None, "many", " ".join(f"{{{{v{i}}}}}" for i in range(9)))
    lib.delete_prompt(ctx, "alice", p.id)
    assert lib.list_prompts(ctx, "alice") == []


def test_export_import_round_trip_and_all_or_nothing(make_ctx) -> None:
    ctx = make_ctx()
    lib.save_prompt(ctx, "alice", None, "A", "one {{x}}")
    lib.save_prompt(ctx, "alice", None, "B", "two")
    data = json.dumps(lib.export_prompts(ctx, "alice"))
    assert lib.import_prompts(ctx, "bob", data) == 2
    assert [(p.name, p.text) for p in lib.list_prompts(ctx, "bob")] == [("A", "one {{x}}"), ("B", "two")]
    bad = json.dumps({"format": lib.FORMAT, "prompts": [{"name": "ok", "text": "fine"}, {"name": "", "text": "x"}]})
    with pytest.raises(InvalidOptionsError, match="prompt 2 of the file"):
        lib.import_prompts(ctx, "carol", bad)
    for raw, words in (("{", "not valid JSON"), ("[]", "not a prompt library"),
                       (json.dumps({"format": lib.FORMAT, "prompts": [5]}), "not an object")):
        with pytest.raises(InvalidOptionsError, match=words):
            lib.import_prompts(ctx, "carol", raw)
    assert lib.list_prompts(ctx, "carol") == []
