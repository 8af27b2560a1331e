"""Characters, personas and Tavern cards: macros, context, V1/V2/V3 JSON and PNG round trips, hostile
uploads (nothing is stored), chats with a character, isolation between owners."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from generators.base import ChatMessage, InvalidOptionsError
from storage.repository import NotFoundError
from webui.services import cards
from webui.services import characters as chars
from webui.services import chat as chat_svc
from webui.services.cards import CardError

ALICE, BOB = "alice", "bob"


@pytest.fixture
def fake_plugin():
    """The scripted fake, recording every request it is asked to answer."""
    from tests.conftest import make_fake_text_plugin

    base = make_fake_text_plugin()

    class Recording(base):  # type: ignore[misc, valid-type]
        requests: list = []

        def stream(self, request, cancel=None):
            type(self).requests.append(request)
            return super().stream(request, cancel)

    Recording.requests = []
    return Recording


def card_json(spec: str = cards.V2, **fields) -> dict:
    data = {"name": "Seraphina", "description": "{{char}} is a forest guardian who protects {{user}}.",
            "personality": "kind, calm", "scenario": "{{user}} wakes up in {{char}}'s glade.",
            "first_mes": "*{{char}} smiles at {{user}}.* Welcome, {{user}}.",
            "mes_example": "<START>\n{{user}}: Who are you?\n{{char}}: I am {{char}}.\n<START>\n{{user}}: Hi\n<BOT>: Hello",
            "creator_notes": "", "system_prompt": "", "post_history_instructions": "",
            "alternate_greetings": ["Oh! {{user}}, you're awake."], "tags": ["fantasy", "guardian"],
            "creator": "tester", "character_version": "1.0", "extensions": {"depth_prompt": {"depth": 4}},
            "character_book": {"entries": [{"keys": ["glade"], "content": "A quiet place."}]}}
    data.update(fields)
    return {"spec": spec, "spec_version": "3.0" if spec == cards.V3 else "2.0", "data": data}


def avatar_png(size=(40, 60), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with(texts: dict[str, dict], image: bytes | None = None) -> bytes:
    """A PNG with the given cards in tEXt chunks (keyword -> card), built by hand."""
    raw = image or avatar_png()
    end = raw.rindex(b"IEND") - 4
    extra = b"".join(chunk(b"tEXt", k.encode() + b"\x00" + base64.b64encode(json.dumps(v).encode())) for k, v in texts.items())
    return raw[:end] + extra + raw[end:]


def count(ctx, owner=ALICE) -> int:
    return len(chars.list_characters(ctx, owner))


# ------------------------------------------------------------------ macros and context


def test_macros_fill_char_and_user_in_one_pass() -> None:
    assert chars.fill_macros("{{char}} meets {{USER}}; <BOT> and <USER>; {{ char }}", "Sera", "Ann") == \
        "Sera meets Ann; Sera and Ann; Sera"
    # a value holding a macro is not expanded again; unknown macros stay
    assert chars.fill_macros("{{user}} {{random}}", "Sera", "{{char}}") == "{{char}} {{random}}"


def test_context_is_built_the_way_sillytavern_does_it() -> None:
    card, _ = cards.card_from_json(card_json(post_history_instructions="Stay in character, {{char}}."))
    history = [ChatMessage("system", "Be terse."), ChatMessage("assistant", "Welcome, Ann."),
               ChatMessage("user", "Where am I, {{char}}?")]
    out = chars.character_context(card, "Ann", "Ann is a lost traveller.", history)
    assert [m.role for m in out] == ["system", "assistant", "user"]
    system = out[0].content
    # the typed prompt stands in for the main prompt (the card has no system prompt of its own)
    order = ["Be terse.", "Ann is a lost traveller.", "Seraphina is a forest guardian who protects Ann.",
             "Seraphina's personality: kind, calm", "Scenario: Ann wakes up in Seraphina's glade.",
             "[Example Chat]\nAnn: Who are you?\nSeraphina: I am Seraphina.", "[Example Chat]\nAnn: Hi\nSeraphina: Hello",
             "[Start a new Chat]"]
    positions = [system.index(part) for part in order]
    assert positions == sorted(positions)
    assert "{{" not in system and "<START>" not in system
    assert out[2].content == "Where am I, Seraphina?\n\nStay in character, Seraphina."


def test_the_cards_own_system_prompt_wins_and_original_stands_for_the_typed_one() -> None:
    card, _ = cards.card_from_json(card_json(system_prompt="You are {{char}}. {{original}}"))
    out = chars.character_context(card, "Ann", "", [ChatMessage("system", "Be terse."), ChatMessage("user", "hi")])
    assert out[0].content.startswith("You are Seraphina. Be terse.")
    plain = chars.character_context(cards.Card(name="Bo"), "Ann", "", [ChatMessage("user", "hi")])
    assert plain[0].content.startswith("Write Bo's next reply in a fictional chat between Bo and Ann.")


# ------------------------------------------------------------------ card formats


@pytest.mark.parametrize("spec", [cards.V2, cards.V3])
def test_json_round_trip_keeps_every_field(spec: str) -> None:
    original = card_json(spec, assets=[{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]
                         if spec == cards.V3 else None)
    if spec == cards.V2:
        original["data"].pop("assets")
    card, got_spec = cards.card_from_json(original)
    assert got_spec == spec and card.name == "Seraphina" and card.alternate_greetings == ("Oh! {{user}}, you're awake.",)
    again = cards.card_to_json(card, spec)
    for key, value in original["data"].items():
        assert again["data"][key] == value, key
    assert again["spec"] == spec
    if spec == cards.V3:  # V3's required additions are present
        assert {"group_only_greetings", "creation_date", "modification_date"} <= again["data"].keys()


def test_v1_cards_are_read() -> None:
    card, spec = cards.card_from_json({"name": "Old", "description": "d", "first_mes": "hi <USER>", "mes_example": ""})
    assert spec == "v1" and card.first_message == "hi <USER>"


def test_png_round_trip_carries_both_chunks_and_the_avatar(make_ctx) -> None:
    ctx = make_ctx()
    raw = png_with({"chara": card_json(cards.V2)}, avatar_png((30, 45)))
    view = chars.import_card(ctx, ALICE, raw, "seraphina.png")
    assert view.card.name == "Seraphina" and view.avatar is not None
    assert Image.open(io.BytesIO(view.avatar)).size == (30, 45)
    name, exported = chars.export_card(ctx, ALICE, view.id, "png")
    assert name == "Seraphina.png"
    texts = {k: json.loads(base64.b64decode(v)) for kind, body in cards.png_chunks(exported) if kind == b"tEXt"
             for k, v in [body.split(b"\x00", 1)] for k in [k.decode()]}
    assert texts["chara"]["spec"] == cards.V2 and texts["ccv3"]["spec"] == cards.V3
    assert texts["ccv3"]["data"]["character_book"] == card_json()["data"]["character_book"]
    assert Image.open(io.BytesIO(exported)).size == (30, 45)  # still a picture
    # and it imports again into the same character
    again = chars.import_card(ctx, BOB, exported, name)
    assert again.card.example_dialogue == view.card.example_dialogue and again.card.tags == view.card.tags


def test_a_png_with_both_chunks_is_read_from_ccv3() -> None:
    raw = png_with({"chara": card_json(cards.V2, name="Old name"), "ccv3": card_json(cards.V3, name="New name")})
    parsed = cards.parse_card_file(raw, "x.png")
    assert parsed.spec == cards.V3 and parsed.card.name == "New name"


@pytest.mark.parametrize("spec", ["v3", "v2"])
def test_json_export_imports_again(make_ctx, spec: str) -> None:
    ctx = make_ctx()
    cid = chars.import_card(ctx, ALICE, json.dumps(card_json(cards.V3)).encode(), "c.json").id
    name, data = chars.export_card(ctx, ALICE, cid, spec)
    assert name.endswith(f".{spec}.json") and json.loads(data)["spec"] == f"chara_card_{spec}"
    again, first = chars.import_card(ctx, ALICE, data, name).card, chars.get_character(ctx, ALICE, cid).card
    stamps = {"group_only_greetings", "creation_date", "modification_date"}  # V3 adds them; V2 has no place for them
    assert {k: v for k, v in again.extra.items() if k not in stamps} == first.extra
    assert again.__dict__ | {"extra": {}} == first.__dict__ | {"extra": {}}


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes that declare width x height pixels (the IDAT is a stream of zeros)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_000, 9)
    return cards.PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


HOSTILE = {
    "not json": (b"{not json", "not valid JSON"),
    "a list": (b"[1, 2]", "is a list"),
    "unknown spec": (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "Unknown card spec"),
    "no data object": (json.dumps({"spec": "chara_card_v2", "data": "x"}).encode(), "must be an object"),
    "no name": (json.dumps(card_json(name="  ")).encode(), "has no name"),
    "greeting not text": (json.dumps(card_json(alternate_greetings=["ok", 5])).encode(),
                          r"data.alternate_greetings\[1\] must be text"),
    "description a number": (json.dumps(card_json(description=7)).encode(), "data.description must be text"),
    "NUL": (json.dumps(card_json(description="a\x00b")).encode(), "NUL"),
    "deep": (('{"spec": "chara_card_v2", "data": {"name": "x", "extensions": ' + "[" * 100 + "]" * 100 + "}}").encode(),
             "nests deeper"),
    "field too long": (json.dumps(card_json(description="x" * (cards.MAX_FIELD_CHARS + 1))).encode(), "the limit is"),
    "oversized file": (b" " * (cards.MAX_FILE_BYTES + 1), "at most 20 MB"),
    "png without a card": (avatar_png(), "holds no character card"),
    "png bomb": (png_with({"chara": card_json()}, bomb_png(100_000, 100_000)), "100,000 × 100,000 pixels"),
    "png cut short": (png_with({"chara": card_json()})[:-30], "cut short"),
    "png bad crc": (avatar_png()[:-5] + b"\x00" + avatar_png()[-4:], "checksum"),
    "chunk not base64 json": (cards.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
                              + chunk(b"tEXt", b"chara\x00!!!!") + chunk(b"IEND", b""), "not valid JSON"),
    "empty": (b"", "empty"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_uploads_are_refused_with_the_reason_and_store_nothing(make_ctx, case: str) -> None:
    ctx = make_ctx()
    raw, reason = HOSTILE[case]
    with pytest.raises(CardError, match=reason):
        chars.import_card(ctx, ALICE, raw, "card.png" if raw.startswith(cards.PNG_SIGNATURE) else "card.json")
    assert count(ctx) == 0


def test_a_png_bomb_is_refused_before_it_is_decoded(monkeypatch) -> None:
    import PIL.Image

    def never(*a, **k):
        raise AssertionError("the image was opened")

    monkeypatch.setattr(PIL.Image, "open", never)
    with pytest.raises(CardError, match="pixels"):
        cards.parse_card_file(png_with({"chara": card_json()}, bomb_png(50_000, 50_000)), "x.png")


def test_a_compressed_text_bomb_is_refused() -> None:
    big = zlib.compress(b"A" * (cards.MAX_JSON_BYTES * 3), 9)
    raw = avatar_png()
    end = raw.rindex(b"IEND") - 4
    bomb = raw[:end] + chunk(b"zTXt", b"chara\x00\x00" + big) + raw[end:]
    with pytest.raises(CardError, match="more than"):
        cards.parse_card_file(bomb, "x.png")


# ------------------------------------------------------------------ chats with a character


def test_a_chat_starts_with_the_greeting_and_replies_see_the_character(make_ctx, fake_plugin) -> None:
    ctx = make_ctx()
    cid = chars.import_card(ctx, ALICE, json.dumps(card_json()).encode()).id
    chars.save_persona(ctx, ALICE, None, "Ann", "{{user}} is a lost traveller.")
    chat_id = chars.start_chat(ctx, ALICE, cid)
    view = chat_svc.get_chat(ctx, ALICE, chat_id)
    assert [m.role for m in view.messages] == ["assistant"]
    assert view.messages[0].content == "*Seraphina smiles at Ann.* Welcome, Ann."
    assert chat_svc.list_chats(ctx, ALICE)[0].character == "Seraphina"

    st = chat_svc.reply_settings(ctx, "fake", {"temperature": 0}, "")
    chat_svc.add_user_message(ctx, ALICE, chat_id, "Where am I?", st)
    final = list(chat_svc.stream_reply(ctx, ALICE, chat_id, st))[-1]
    assert [m.role for m in final.messages] == ["assistant", "user", "assistant"] and final.messages[-1].status == "ok"
    sent = fake_plugin.requests[-1].messages
    assert [m.role for m in sent] == ["system", "assistant", "user"]
    assert "Ann is a lost traveller." in sent[0].content and "[Example Chat]\nAnn: Who are you?" in sent[0].content
    assert sent[1].content.startswith("*Seraphina smiles at Ann.*")
    # the chat still names its character after the reply saved its settings
    assert chars.chat_character(chat_svc.get_chat(ctx, ALICE, chat_id).settings)["name"] == "Seraphina"


def test_alternative_greetings_and_a_chosen_persona(make_ctx) -> None:
    ctx = make_ctx()
    cid = chars.import_card(ctx, ALICE, json.dumps(card_json()).encode()).id
    pid = chars.save_persona(ctx, ALICE, None, "Kim")
    chars.save_persona(ctx, ALICE, None, "Lee", make_default=True)
    chat_id = chars.start_chat(ctx, ALICE, cid, persona_id=pid, greeting=1)
    first = chat_svc.get_chat(ctx, ALICE, chat_id).messages[0]
    assert first.content == "Oh! Kim, you're awake." and (first.branch, first.branches) == (2, 2)
    flipped = chat_svc.switch_branch(ctx, ALICE, chat_id, first.id, -1)
    assert flipped.messages[0].content == "*Seraphina smiles at Kim.* Welcome, Kim."
    default_chat = chars.start_chat(ctx, ALICE, cid)
    assert chat_svc.get_chat(ctx, ALICE, default_chat).messages[0].content.endswith("Welcome, Lee.")
    with pytest.raises(InvalidOptionsError, match="pick 1 to 2"):
        chars.start_chat(ctx, ALICE, cid, greeting=5)


def test_deleting_a_character_leaves_its_chats_as_plain_chats(make_ctx, fake_plugin) -> None:
    ctx = make_ctx()
    cid = chars.import_card(ctx, ALICE, json.dumps(card_json()).encode()).id
    chat_id = chars.start_chat(ctx, ALICE, cid)
    chars.delete_character(ctx, ALICE, cid)
    st = chat_svc.reply_settings(ctx, "fake", {"temperature": 0}, "")
    chat_svc.add_user_message(ctx, ALICE, chat_id, "still there?", st)
    assert list(chat_svc.stream_reply(ctx, ALICE, chat_id, st))[-1].messages[-1].status == "ok"
    assert [m.role for m in fake_plugin.requests[-1].messages] == ["assistant", "user"]


def test_search_edit_delete(make_ctx) -> None:
    ctx = make_ctx()
    a = chars.import_card(ctx, ALICE, json.dumps(card_json()).encode()).id
    chars.import_card(ctx, ALICE, json.dumps(card_json(name="Rook", description="a chess piece", tags=["games"])).encode())
    assert [c.name for c in chars.list_characters(ctx, ALICE, "chess")] == ["Rook"]
    assert [c.name for c in chars.list_characters(ctx, ALICE, "GUARDIAN")] == ["Seraphina"]  # a tag
    assert [c.name for c in chars.list_characters(ctx, ALICE, "100%_")] == []
    card = chars.get_character(ctx, ALICE, a).card
    chars.save_character(ctx, ALICE, a, cards.Card(**{**card.__dict__, "name": "Sera"}))
    assert chars.get_character(ctx, ALICE, a).card.name == "Sera"
    assert chars.get_character(ctx, ALICE, a).avatar is None  # kept as it was (none)
    with pytest.raises(CardError, match="has no name"):
        chars.save_character(ctx, ALICE, a, cards.Card(name=" "))
    chars.delete_character(ctx, ALICE, a)
    assert [c.name for c in chars.list_characters(ctx, ALICE)] == ["Rook"]


def test_another_user_never_sees_them(make_ctx) -> None:
    ctx = make_ctx()
    cid = chars.import_card(ctx, ALICE, json.dumps(card_json()).encode()).id
    pid = chars.save_persona(ctx, ALICE, None, "Ann")
    assert chars.list_characters(ctx, BOB) == [] and chars.list_personas(ctx, BOB) == []
    for attempt in (lambda: chars.get_character(ctx, BOB, cid), lambda: chars.start_chat(ctx, BOB, cid),
                    lambda: chars.delete_character(ctx, BOB, cid), lambda: chars.export_card(ctx, BOB, cid),
                    lambda: chars.save_character(ctx, BOB, cid, cards.Card(name="mine now")),
                    lambda: chars.delete_persona(ctx, BOB, pid)):
        with pytest.raises(NotFoundError):
            attempt()
    with pytest.raises(InvalidOptionsError, match="no character named"):
        chars.context_for_request(ctx, BOB, "Seraphina", None, [ChatMessage("user", "hi")])
    # Bob's chat cannot borrow Alice's character by its id either
    bob_chat = chars.start_chat(ctx, ALICE, cid)
    with pytest.raises(NotFoundError):
        chat_svc.get_chat(ctx, BOB, bob_chat)
    assert chars.get_character(ctx, ALICE, cid).card.name == "Seraphina" and len(chars.list_personas(ctx, ALICE)) == 1


def test_api_context_puts_the_greeting_first(make_ctx) -> None:
    ctx = make_ctx()
    chars.import_card(ctx, ALICE, json.dumps(card_json()).encode())
    out = chars.context_for_request(ctx, ALICE, "Seraphina", None, [ChatMessage("user", "hi {{char}}")])
    assert [m.role for m in out] == ["system", "assistant", "user"]
    assert out[1].content == "*Seraphina smiles at User.* Welcome, User." and out[2].content == "hi Seraphina"
    # a conversation that already starts with a reply keeps it
    kept = chars.context_for_request(ctx, ALICE, "Seraphina", None,
                                     [ChatMessage("assistant", "Hey."), ChatMessage("user", "hi")])
    assert [m.content for m in kept[1:]] == ["Hey.", "hi"]


def test_migration_goes_down_and_up(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    from storage import Store
    from storage.db import MIGRATIONS

    store = Store(f"sqlite:///{tmp_path}/m.db", tmp_path)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        script = ScriptDirectory.from_config(cfg)
        mine = next(r for r in script.walk_revisions() if (r.doc or "").startswith("characters, personas"))
        command.downgrade(cfg, str(mine.down_revision))  # below this migration (and any chained on it)
    assert "characters" not in inspect(store.engine).get_table_names()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    assert {"characters", "personas", "saved_prompts"} <= set(inspect(store.engine).get_table_names())
    store.close()


def test_an_avatar_upload_is_checked_before_it_is_decoded(monkeypatch) -> None:
    out = io.BytesIO()
    Image.new("RGB", (1200, 1800), (1, 2, 3)).save(out, format="JPEG")
    small = Image.open(io.BytesIO(cards.avatar_from_image(out.getvalue())))
    assert small.format == "PNG" and small.size == (512, 768)  # scaled into the box, re-encoded
    with pytest.raises(CardError, match="cannot be read"):
        cards.avatar_from_image(b"GIF89a not really")
    import PIL.Image

    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    with pytest.raises(CardError, match="pixels"):
        cards.avatar_from_image(bomb_png(60_000, 60_000))
