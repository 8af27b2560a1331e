"""Characters and personas: keep them per owner, import/export cards, start a chat, build the context.

A chat with a character records `{"character": {"id", "name", "persona_id"}}` in its settings; every reply
(and an API request naming a character) goes through `character_context`, which builds what the model
reads the way SillyTavern builds it for chat models:

1. one system message: the main prompt (the character's own system prompt when it has one — `{{original}}`
   in it stands for the prompt typed in the chat — else the typed prompt, else ST's default "Write
   {{char}}'s next reply…"), the persona's description, the character's description, "{{char}}'s
   personality: …", "Scenario: …", then each block of the example dialogue (blocks split at `<START>`)
   headed `[Example Chat]`, and `[Start a new Chat]`. ST sends those as separate system messages; here they
   are one, because the text engine gathers every system message at the front anyway and several chat
   templates accept only one;
2. the conversation, starting with the character's greeting (the first reply of the chat);
3. the character's post-history instructions, appended to the last user message (ST sends them after the
   history; a system message there would be moved to the front by the engine).

`{{char}}`, `{{user}}` (and the V1 spellings `<BOT>`, `<USER>`) are filled in everywhere, case-insensitively;
`{{user}}` is the persona's name (the owner's default persona, else "User").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from generators.base import ChatMessage, InvalidOptionsError
from storage import prompt_assets as assets
from storage import repository as repo
from storage.models import Character, Persona

from . import cards
from .context import AppContext, check_text

DEFAULT_USER = "User"
DEFAULT_MAIN_PROMPT = "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}."
EXAMPLE_HEADER = "[Example Chat]"
NEW_CHAT = "[Start a new Chat]"
MACRO = re.compile(r"\{\{\s*(char|user|original|description|personality|scenario|persona)\s*\}\}|<(BOT|USER)>",
                   re.IGNORECASE)
CHAT_KEY = "character"  # where a chat's settings name its character


class UnknownAssetError(InvalidOptionsError):
    """A character or persona named in a request that the owner does not have; `field` names which."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, field)
        self.field = field


@dataclass(frozen=True)
class CharacterSummary:
    id: str
    name: str
    description: str
    tags: tuple[str, ...]
    updated_at: datetime


@dataclass(frozen=True)
class CharacterView:
    id: str
    card: cards.Card
    avatar: bytes | None


@dataclass(frozen=True)
class PersonaView:
    id: str
    name: str
    description: str
    is_default: bool


# ------------------------------------------------------------------ macros and context


def fill_macros(text: str, char: str, user: str, extra: dict[str, str] | None = None) -> str:
    """Replace {{char}}, {{user}} (and <BOT>, <USER>, and the names in `extra`) in one pass: a value that
    itself contains a macro is not expanded again."""
    values = {"char": char, "user": user, "bot": char, **(extra or {})}

    def sub(m: re.Match[str]) -> str:
        key = (m.group(1) or m.group(2)).lower()
        return values.get(key, m.group(0))

    return MACRO.sub(sub, text or "")


def example_blocks(example_dialogue: str) -> list[str]:
    """The example dialogue split at <START> (ST's separator, any case), empty blocks dropped."""
    return [b.strip() for b in re.split(r"<START>", example_dialogue or "", flags=re.IGNORECASE) if b.strip()]


def system_text(card: cards.Card, persona_name: str, persona_description: str, typed_prompt: str = "") -> str:
    """The one system message of a character chat (see the module's docstring for the order)."""
    char, user = card.name, persona_name

    def fill(text: str, **extra: str) -> str:
        return fill_macros(text, char, user, extra).strip()

    main = card.system_prompt.strip()
    typed = fill(typed_prompt)
    main = fill(main, original=typed) if main else typed or fill(DEFAULT_MAIN_PROMPT)
    parts = [main, fill(persona_description), fill(card.description)]
    if card.personality.strip():
        parts.append(f"{char}'s personality: {fill(card.personality)}")
    if card.scenario.strip():
        parts.append(f"Scenario: {fill(card.scenario)}")
    for block in example_blocks(card.example_dialogue):
        parts.append(f"{EXAMPLE_HEADER}\n{fill(block)}")
    parts.append(NEW_CHAT)
    return "\n\n".join(p for p in parts if p)


def character_context(card: cards.Card, persona_name: str, persona_description: str,
                      messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """What the model reads for `messages` (the conversation; leading system messages are the typed prompt)."""
    typed = "\n\n".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    out = [ChatMessage("system", system_text(card, persona_name, persona_description, typed))]
    out += [replace(m, content=fill_macros(m.content, card.name, persona_name)) for m in turns]
    post = fill_macros(card.post_history_instructions, card.name, persona_name).strip()
    if post and out[-1].role == "user":
        out[-1] = replace(out[-1], content=f"{out[-1].content}\n\n{post}")
    return out


def greetings(card: cards.Card) -> list[str]:
    return [g for g in (card.first_message, *card.alternate_greetings) if g.strip()]


# ------------------------------------------------------------------ rows <-> values


def _card(row: Character) -> cards.Card:
    return cards.Card(
        name=row.name, description=row.description, personality=row.personality, scenario=row.scenario,
        first_message=row.first_message, alternate_greetings=tuple(row.alternate_greetings or ()),
        example_dialogue=row.example_dialogue, system_prompt=row.system_prompt,
        post_history_instructions=row.post_history_instructions, creator_notes=row.creator_notes,
        creator=row.creator, character_version=row.character_version, tags=tuple(row.tags or ()),
        extra=dict(row.card_extra or {}),
    )


def _columns(card: cards.Card) -> dict[str, Any]:
    values = {f: getattr(card, f) for f in cards.TEXT_FIELDS}
    values.update(alternate_greetings=list(card.alternate_greetings), tags=list(card.tags), card_extra=dict(card.extra))
    return values


def _persona(row: Persona) -> PersonaView:
    return PersonaView(row.id, row.name, row.description, row.is_default)


def check_card(ctx: AppContext, card: cards.Card) -> cards.Card:
    """A card typed in the editor gets the same checks as an imported one."""
    data = cards.card_to_json(card, cards.V2)
    checked, _spec = cards.card_from_json(data)
    return replace(checked, extra=card.extra)


# ------------------------------------------------------------------ characters


def list_characters(ctx: AppContext, owner: str, query: str = "") -> list[CharacterSummary]:
    check_text(query or "", "search")
    with ctx.store.begin() as s:
        return [CharacterSummary(r.id, r.name, r.description[:200], tuple(r.tags or ()), r.updated_at)
                for r in assets.list_characters(s, owner, (query or "")[:200])]


def get_character(ctx: AppContext, owner: str, character_id: str) -> CharacterView:
    with ctx.store.begin() as s:
        row = assets.get_owned(s, Character, owner, character_id)
        return CharacterView(row.id, _card(row), row.avatar)


_KEEP: Any = object()


def save_character(ctx: AppContext, owner: str, character_id: str | None, card: cards.Card,
                   avatar: bytes | None = _KEEP) -> str:
    """Create (no id) or update a character; `avatar` is already re-encoded (see cards.avatar_from_image).
    Leaving `avatar` out keeps the stored one; None removes it."""
    card = check_card(ctx, card)
    values = _columns(card)
    if avatar is not _KEEP:
        values["avatar"] = avatar
    with ctx.store.begin() as s:
        if character_id:
            return assets.update_owned(s, Character, owner, character_id, **values).id
        return assets.create_owned(s, Character, owner, **values).id


def delete_character(ctx: AppContext, owner: str, character_id: str) -> None:
    """Chats with the character keep their messages and go on as plain chats."""
    with ctx.store.begin() as s:
        assets.delete_owned(s, Character, owner, character_id)


def import_card(ctx: AppContext, owner: str, raw: bytes, filename: str = "") -> CharacterView:
    """All or nothing: a refused card stores nothing and the message says why."""
    parsed = cards.parse_card_file(raw, filename)
    cid = save_character(ctx, owner, None, parsed.card, parsed.avatar)
    return get_character(ctx, owner, cid)


EXPORT_KINDS = {"v3": "JSON (Character Card V3)", "v2": "JSON (Character Card V2)", "png": "PNG (V2 + V3 chunks)"}


def export_card(ctx: AppContext, owner: str, character_id: str, kind: str = "png") -> tuple[str, bytes]:
    """(file name, bytes) of the card as V3 JSON, V2 JSON, or a PNG carrying both (not a generated image:
    a card export is not signed)."""
    import json

    if kind not in EXPORT_KINDS:
        raise InvalidOptionsError(f"Unknown export format {kind!r}; pick one of {', '.join(EXPORT_KINDS)}.")
    view = get_character(ctx, owner, character_id)
    stem = re.sub(r"[^\w-]+", "-", view.card.name).strip("-")[:60] or "character"
    if kind == "png":
        return f"{stem}.png", cards.card_png(view.card, view.avatar)
    spec = cards.V3 if kind == "v3" else cards.V2
    data = json.dumps(cards.card_to_json(view.card, spec), ensure_ascii=False, indent=2)
    return f"{stem}.{kind}.json", data.encode("utf-8")


# ------------------------------------------------------------------ personas


def list_personas(ctx: AppContext, owner: str) -> list[PersonaView]:
    with ctx.store.begin() as s:
        return [_persona(p) for p in assets.list_personas(s, owner)]


def save_persona(ctx: AppContext, owner: str, persona_id: str | None, name: str, description: str = "",
                 make_default: bool = False) -> str:
    check_text(name if name is not None else "", "persona name", cards.MAX_NAME_CHARS)
    check_text(description if description is not None else "", "persona description", cards.MAX_FIELD_CHARS)
    name = (name or "").strip()
    if not name:
        raise InvalidOptionsError("A persona needs a name (it fills {{user}}).")
    with ctx.store.begin() as s:
        if persona_id:
            row = assets.update_owned(s, Persona, owner, persona_id, name=name, description=description or "")
        else:
            row = assets.create_owned(s, Persona, owner, name=name, description=description or "",
                                      is_default=assets.default_persona(s, owner) is None)
        if make_default:
            assets.set_default_persona(s, owner, row.id)
        return row.id


def set_default_persona(ctx: AppContext, owner: str, persona_id: str | None) -> None:
    with ctx.store.begin() as s:
        assets.set_default_persona(s, owner, persona_id)


def delete_persona(ctx: AppContext, owner: str, persona_id: str) -> None:
    with ctx.store.begin() as s:
        assets.delete_owned(s, Persona, owner, persona_id)


def _persona_for(s: Any, owner: str, persona_id: str | None) -> tuple[str, str]:
    """(name, description) of the named persona, else the owner's default, else "User"."""
    row = None
    if persona_id:
        try:
            row = assets.get_owned(s, Persona, owner, persona_id)
        except repo.NotFoundError:
            row = None  # deleted since the chat started: fall back to the default
    row = row or assets.default_persona(s, owner)
    return (row.name, row.description) if row else (DEFAULT_USER, "")


# ------------------------------------------------------------------ chats with a character


def start_chat(ctx: AppContext, owner: str, character_id: str, persona_id: str | None = None,
               greeting: int = 0) -> str:
    """A new chat whose first reply is the character's greeting, macros filled in; the alternative greetings
    are the other versions of that reply, and `greeting` (0: the first message) picks the one shown.
    Returns the chat's id."""
    with ctx.store.begin() as s:
        row = assets.get_owned(s, Character, owner, character_id)
        if persona_id:
            assets.get_owned(s, Persona, owner, persona_id)
        card = _card(row)
        user, _ = _persona_for(s, owner, persona_id)
        options = greetings(card)
        if options and not 0 <= greeting < len(options):
            raise InvalidOptionsError(f"{card.name} has {len(options)} greeting(s); pick 1 to {len(options)}.")
        link = {"id": row.id, "name": card.name, "persona_id": persona_id}
        chat = repo.create_session(s, owner, "chat", f"Chat with {card.name}"[:200], {CHAT_KEY: link})
        # every greeting is a version of the first reply (ST's swipes): ◀ ▶ flip between them
        first = [repo.add_message(s, chat, None, "assistant", fill_macros(g, card.name, user)) for g in options]
        if first:
            chat.active_leaf_id = first[greeting].id
        return chat.id


def chat_character(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The character link a chat's settings carry, if any."""
    link = (settings or {}).get(CHAT_KEY)
    return link if isinstance(link, dict) and link.get("id") else None


def context_for_chat(ctx: AppContext, owner: str, settings: dict[str, Any],
                     messages: list[ChatMessage]) -> list[ChatMessage]:
    """The messages a chat's reply is generated from: unchanged for a plain chat (or when its character was
    deleted), else the character's context (see the module's docstring)."""
    link = chat_character(settings)
    if link is None:
        return messages
    with ctx.store.begin() as s:
        try:
            row = assets.get_owned(s, Character, owner, link["id"])
        except repo.NotFoundError:
            return messages
        name, description = _persona_for(s, owner, link.get("persona_id"))
        card = _card(row)
    return character_context(card, name, description, messages)


def context_for_request(ctx: AppContext, owner: str, character: str, persona: str | None,
                        messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The API's `character` field: the character (by id or exact name, the owner's only) and persona
    (by id or name; unset: the default) applied to a stateless conversation. The greeting comes first, as in
    a chat started on the page, unless the conversation already starts with a reply."""
    with ctx.store.begin() as s:
        row = _by_id_or_name(s, Character, owner, character, "character")
        persona_id = _by_id_or_name(s, Persona, owner, persona, "persona").id if persona else None
        name, description = _persona_for(s, owner, persona_id)
        card = _card(row)
    turns = [m for m in messages if m.role != "system"]
    options = greetings(card)
    if options and (not turns or turns[0].role != "assistant"):
        first = next(i for i, m in enumerate(messages) if m.role != "system") if turns else len(messages)
        messages = [*messages[:first], ChatMessage("assistant", options[0]), *messages[first:]]
    return character_context(card, name, description, list(messages))


def _by_id_or_name(s: Any, model: type[Any], owner: str, key: str, what: str) -> Any:
    from sqlalchemy import select

    if repo.is_row_id(key):
        try:
            return assets.get_owned(s, model, owner, key)
        except repo.NotFoundError:
            pass
    rows = list(s.scalars(select(model).where(model.owner == owner, model.name == key).limit(2)))
    if not rows:
        raise UnknownAssetError(f"You have no {what} named {key[:80]!r} (give its exact name or id).", what)
    if len(rows) > 1:
        raise UnknownAssetError(f"You have several {what}s named {key[:80]!r}; name it by its id instead.", what)
    return rows[0]
