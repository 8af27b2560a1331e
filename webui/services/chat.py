"""Chat use cases: post a message, stream a reply, regenerate, edit, branch, list, export.

Every function takes the AppContext and an owner and returns plain dataclasses, so the
Gradio tab and the HTTP API call exactly the same code.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from generators.base import ChatMessage, InvalidOptionsError, RenderedPrompt, SamplingParams, TextGenerator, TextRequest
from storage import repository as repo
from storage.db import StorageError

from . import characters, disclosure, instruct
from .context import AppContext, check_text, clean_title
from .generation import sampling_params, stream_text
from .loading import wait_until_loaded

log = logging.getLogger(__name__)

KIND = "chat"
MAX_MESSAGE_CHARS = 100_000
TITLE_CHARS = 60
STATUS_NOTE = {"cancelled": "stopped", "error": "failed", "interrupted": "interrupted", "streaming": "writing…"}


@dataclass(frozen=True)
class ViewMessage:
    id: str
    role: str
    content: str
    status: str
    branch: int  # 1-based position among alternatives
    branches: int
    model: str | None = None


@dataclass(frozen=True)
class ChatView:
    """A UI-ready snapshot of one chat: the visible branch, oldest first."""

    id: str
    title: str
    messages: tuple[ViewMessage, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    notice: str = ""
    focus: str = ""  # the message whose alternatives were just flipped, if any
    loading: str = ""  # while the model loads before the reply: what it is doing and for how long


@dataclass(frozen=True)
class ChatSummary:
    id: str
    title: str
    updated_at: datetime
    character: str = ""  # the name of the character the chat is with, if any


@dataclass(frozen=True)
class ReplySettings:
    """What a reply is generated with; stored on the chat so it is remembered."""

    model: str
    params: SamplingParams
    system_prompt: str = ""
    preset: str = ""  # the sampler preset the values were loaded from (single values may differ since)
    template: str = ""  # the instruct template's name ("" = the model's own)

    def as_json(self) -> dict[str, Any]:
        return {"model": self.model, "system_prompt": self.system_prompt, "params": self.params.model_dump(mode="json"),
                "preset": self.preset, "template": self.template}


def reply_settings(ctx: AppContext, model: str | None, params: dict[str, Any] | None, system_prompt: str = "",
                   preset: str | None = None, template: str | None = None, owner: str | None = None) -> ReplySettings:
    """Validate the model name, sampler values and instruct template (the owner's, by name) of a request."""
    name = model or ctx.default_model
    # UnknownGeneratorError with the list of models (someone else's own model is unknown to `owner`)
    ctx.registry.get(name) if owner is None else ctx.registry.get_visible(name, owner)
    ctx.check_text(system_prompt or "", "system prompt")
    ctx.check_text(preset or "", "preset name")
    chosen = instruct.get_template(ctx, owner or ctx.default_owner, template)
    shown = "" if chosen.source is None else chosen.name
    return ReplySettings(name, sampling_params(params, ctx), (system_prompt or "").strip(), (preset or "").strip()[:100],
                         shown)


def _request(ctx: AppContext, owner: str, settings: ReplySettings, history: list[ChatMessage],
             chat_settings: dict[str, Any] | None = None) -> TextRequest:
    """The request for a reply: the system prompt first (a chat with a character: the character's context,
    see services.characters), the instruct template and its stop strings applied."""
    if settings.system_prompt:
        history = [ChatMessage("system", settings.system_prompt), *history]
    history = characters.context_for_chat(ctx, owner, chat_settings or {}, history)
    template = instruct.get_template(ctx, owner, settings.template)
    source, params = instruct.apply(ctx, settings.model, template, settings.params)
    return TextRequest(messages=tuple(history), params=params, template=source)


def _view(s: Any, chat: Any, notice: str = "") -> ChatView:
    path = repo.active_path(s, chat)
    msgs = tuple(
        ViewMessage(m.id, m.role, m.content, m.status, b.index, b.count, m.model) for m, b in path if m.role != "system"
    )
    return ChatView(chat.id, chat.title, msgs, dict(chat.settings), notice)


def _clean_text(text: str) -> str:
    check_text(text if text is not None else "", "message")
    text = (text or "").strip()
    if not text:
        raise InvalidOptionsError("Type a message first.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidOptionsError(f"The message is {len(text):,} characters long; the limit is {MAX_MESSAGE_CHARS:,}.")
    return text


# ------------------------------------------------------------------ reading


def get_chat(ctx: AppContext, owner: str, chat_id: str) -> ChatView:
    with ctx.store.begin() as s:
        return _view(s, repo.get_session(s, owner, chat_id, KIND))


def list_chats(ctx: AppContext, owner: str, query: str = "") -> list[ChatSummary]:
    query = clean_title(query, "search")
    with ctx.store.begin() as s:
        return [ChatSummary(c.id, c.title or "Untitled chat", c.updated_at,
                            (characters.chat_character(c.settings) or {}).get("name", ""))
                for c in repo.list_sessions(s, owner, KIND, query)]


# ------------------------------------------------------------------ writing


def add_user_message(ctx: AppContext, owner: str, chat_id: str | None, text: str, settings: ReplySettings) -> ChatView:
    """Save the user's message under the visible branch (creating the chat if needed)."""
    text = _clean_text(text)
    ctx.check_text(text, "message")
    ctx.check_rate(owner, consume=False)  # refuse before saving anything; the reply counts the request
    with ctx.store.begin() as s:
        if chat_id:
            chat = repo.get_session(s, owner, chat_id, KIND)
        else:
            title = " ".join(text.split())[:TITLE_CHARS]
            chat = repo.create_session(s, owner, KIND, title)
        _refuse_while_streaming(s, chat)
        chat.settings = {**chat.settings, **settings.as_json()}  # keeps what else the chat records (its character)
        repo.add_message(s, chat, chat.active_leaf_id, "user", text)
        return _view(s, chat)


def _refuse_while_streaming(s: Any, chat: Any) -> None:
    leaf = repo.get_message(s, chat, chat.active_leaf_id) if chat.active_leaf_id else None
    if leaf is not None and leaf.status == "streaming":
        raise InvalidOptionsError("A reply is still being written: wait for it to finish or press Stop.")


def edit_message(ctx: AppContext, owner: str, chat_id: str, message_id: str, text: str) -> ChatView:
    """An edited user message becomes a new branch beside the original (which is kept)."""
    text = _clean_text(text)
    ctx.check_text(text, "message")
    with ctx.store.begin() as s:
        chat = repo.get_session(s, owner, chat_id, KIND)
        _refuse_while_streaming(s, chat)
        original = repo.get_message(s, chat, message_id)
        if original.role != "user":
            raise InvalidOptionsError("Only your own messages can be edited; use Regenerate for a new reply.")
        repo.add_message(s, chat, original.parent_id, "user", text)
        return _view(s, chat, "Edited — the original message is kept as an alternative.")


def prepare_regenerate(ctx: AppContext, owner: str, chat_id: str) -> ChatView:
    """Step back to the user message of the last reply, so the next reply becomes its sibling."""
    ctx.check_rate(owner, consume=False)
    with ctx.store.begin() as s:
        chat = repo.get_session(s, owner, chat_id, KIND)
        _refuse_while_streaming(s, chat)
        path = repo.active_path(s, chat)
        if not path:
            raise InvalidOptionsError("There is nothing to regenerate yet: send a message first.")
        last = path[-1][0]
        if last.role == "assistant":
            if last.parent_id is None:
                raise InvalidOptionsError("This reply has no message before it to answer again.")
            chat.active_leaf_id = last.parent_id
        return _view(s, chat)


def switch_branch(ctx: AppContext, owner: str, chat_id: str, message_id: str, step: int) -> ChatView:
    with ctx.store.begin() as s:
        chat = repo.get_session(s, owner, chat_id, KIND)
        _refuse_while_streaming(s, chat)
        shown = repo.switch_branch(s, chat, message_id, step)
        return replace(_view(s, chat), focus=shown.id)


def stream_reply(
    ctx: AppContext,
    owner: str,
    chat_id: str,
    settings: ReplySettings,
    cancel: threading.Event | None = None,
    progress: Any = None,
) -> Iterator[ChatView]:
    """Answer the visible branch's last user message; yields the chat as the reply grows.

    The reply is saved while it streams, so Stop, an error or a crash keeps what was shown.
    """
    with ctx.store.begin() as s:
        chat = repo.get_session(s, owner, chat_id, KIND)
        path = repo.active_path(s, chat)
        if not path or path[-1][0].role != "user":
            raise InvalidOptionsError("The last message is not yours: send a message or press Regenerate.")
        history = [ChatMessage(m.role, m.content) for m, _ in path if m.content or m.role == "user"]  # type: ignore[arg-type]
        request = _request(ctx, owner, settings, history, chat.settings)
        chat.settings = {**chat.settings, **settings.as_json()}  # keeps what else the chat records (its character)
        parent_id = path[-1][0].id
        reply = repo.add_message(s, chat, parent_id, "assistant", "", status="streaming", model=settings.model)
        base = _view(s, chat)

    def attach(generation_id: str) -> None:
        with ctx.store.begin() as s:
            msg = repo.get_message(s, repo.get_session(s, owner, chat_id, KIND), reply.id)
            msg.generation_id = generation_id

    def save(text: str, status: str | None) -> None:
        with ctx.store.begin() as s:
            repo.set_message_content(s, reply.id, text, status)

    def with_reply(text: str, status: str, notice: str = "") -> ChatView:
        msgs = base.messages[:-1] + (replace(base.messages[-1], content=text, status=status),)
        return replace(base, messages=msgs, notice=notice)

    yield base
    try:  # a first reply may wait for the model to load: say what is happening in the reply's place
        for step in wait_until_loaded(ctx, settings.model):
            if cancel is not None and cancel.is_set():  # Stop while loading: end the reply now, the load goes on
                save("", "cancelled")
                yield with_reply("", "cancelled", "Stopped before the model had loaded; it keeps loading, "
                                                  "so the next message starts at once.")
                return
            yield replace(base, loading=step.text)
    except BaseException as exc:
        save("", "cancelled" if isinstance(exc, GeneratorExit) else "error")
        raise
    notice = ""
    for _delta, result in stream_text(
        ctx, owner, settings.model, request, cancel=cancel, session_id=chat_id, on_start=attach, save=save, progress=progress,
        preset=settings.preset or None,
    ):
        if result.outcome == "running":
            yield with_reply(result.text, "streaming")
            continue
        if result.dropped_messages:
            notice = (
                f"The {result.dropped_messages} oldest message(s) were left out so the conversation fits "
                "the model's context window (the system prompt was kept)."
            )
        elif result.outcome == "cancelled":
            notice = f"Stopped after {result.completion_tokens} tokens; the partial reply is saved."
        yield with_reply(result.text, result.outcome, notice)


def sent_prompt(ctx: AppContext, owner: str, chat_id: str) -> RenderedPrompt:
    """What the model read for the visible branch's last reply (or would read for a reply now, when the last
    message is the person's): the conversation after the instruct template, with its token count, rendered
    by the model itself with the chat's saved settings. Loads the model if it is not loaded."""
    with ctx.store.begin() as s:
        chat = repo.get_session(s, owner, chat_id, KIND)
        path = [m for m, _ in repo.active_path(s, chat)]
        stored = dict(chat.settings)
    while path and path[-1].role == "assistant":
        path.pop()
    if not path:
        raise InvalidOptionsError("Nothing was sent yet: send a message first.")
    settings = reply_settings(ctx, stored.get("model"), stored.get("params") or {}, stored.get("system_prompt") or "",
                              stored.get("preset"), stored.get("template"), owner)
    request = _request(ctx, owner, settings, [ChatMessage(m.role, m.content) for m in path  # type: ignore[arg-type]
                                              if m.content or m.role == "user"], stored)
    with ctx.registry.use(settings.model, owner=owner) as gen:
        if not isinstance(gen, TextGenerator):
            raise InvalidOptionsError(f"{settings.model!r} is not a text model.")
        return gen.render_prompt(request)


# ------------------------------------------------------------------ managing


def rename_chat(ctx: AppContext, owner: str, chat_id: str, title: str) -> ChatView:
    title = clean_title(title)
    if not title:
        raise InvalidOptionsError("A chat title cannot be empty.")
    with ctx.store.begin() as s:
        chat = repo.rename_session(s, owner, chat_id, title)
        return _view(s, chat)


def delete_chat(ctx: AppContext, owner: str, chat_id: str) -> None:
    with ctx.store.begin() as s:
        repo.delete_session(s, owner, chat_id)


def export_json(ctx: AppContext, owner: str, chat_id: str) -> dict[str, Any]:
    """Every branch, plus the provenance block of the visible one (`provenance`)."""
    with ctx.store.begin() as s:
        session = repo.get_session(s, owner, chat_id, KIND)
        data = repo.export_session(s, session)
    view = get_chat(ctx, owner, chat_id)
    data["provenance"] = _provenance(ctx, owner, view)[0]
    return data


def _provenance(ctx: AppContext, owner: str, view: ChatView) -> tuple[dict[str, Any], list[disclosure.Part]]:
    """The provenance block of the visible branch: who wrote each message, with which model, when."""
    with ctx.store.begin() as s:
        session = repo.get_session(s, owner, view.id, KIND)
        when = {m.id: m.created_at for m in repo.messages_of(s, session.id)}
        created = session.created_at
    parts = [disclosure.Part("model" if m.role == "assistant" else "person", m.content, m.model, when.get(m.id), m.id)
             for m in view.messages if m.role in ("user", "assistant")]
    return disclosure.block("chat", view.title, parts, created), parts


def export_markdown(ctx: AppContext, owner: str, chat_id: str) -> str:
    """The visible branch as Markdown under its AI-generated label, with its provenance block (the JSON
    export keeps every branch)."""
    view = get_chat(ctx, owner, chat_id)
    lines = []
    system = view.settings.get("system_prompt")
    if system:
        lines += [f"> **System:** {system}", ""]
    for m in view.messages:
        who = "You" if m.role == "user" else f"Assistant ({m.model})" if m.model else "Assistant"
        note = f" _({STATUS_NOTE[m.status]})_" if m.status in STATUS_NOTE else ""
        lines += [f"### {who}{note}", "", m.content, ""]
    info, parts = _provenance(ctx, owner, view)
    return disclosure.markdown(info, view.title or "Untitled chat", "\n".join(lines), parts)


IMPORT_STATUSES = ("ok", "cancelled", "error", "interrupted")  # a reply still "streaming" is imported as interrupted
MAX_IMPORT_MESSAGES = 20_000


def _import_checked(ctx: AppContext, data: Any) -> dict[str, Any]:
    """Check an export like every other input, before anything is stored: text fields are text within
    the prompt limit, without NUL or broken Unicode; roles and statuses are known; ids are ids."""
    if not isinstance(data, dict) or data.get("format") != repo.EXPORT_FORMAT:
        raise InvalidOptionsError(f"This is not an AIGC Studio export (expected \"format\": \"{repo.EXPORT_FORMAT}\").")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise InvalidOptionsError("The export has no list of messages.")
    if len(messages) > MAX_IMPORT_MESSAGES:
        raise InvalidOptionsError(f"The export holds {len(messages):,} messages; "
                                  f"at most {MAX_IMPORT_MESSAGES:,} can be imported.")
    if not isinstance(data.get("settings") or {}, dict):
        raise InvalidOptionsError("The export's \"settings\" must be an object.")
    leaf = data.get("active_leaf_id")
    if leaf is not None and not isinstance(leaf, (str, int)):
        raise InvalidOptionsError("The export's \"active_leaf_id\" must be a message id.")
    clean = {**data, "title": clean_title(data.get("title"), "chat title"), "messages": [],
             "active_leaf_id": None if leaf is None else str(leaf)}
    for n, raw in enumerate(messages, 1):
        where = f"message {n}"
        if not isinstance(raw, dict):
            raise InvalidOptionsError(f"The export's {where} is not an object.")
        status = raw.get("status", "ok")
        if status == "streaming":
            status = "interrupted"
        if status not in IMPORT_STATUSES:
            raise InvalidOptionsError(f"The export's {where} has the status {str(status)[:40]!r}; "
                                      f"a message's status is one of {', '.join(IMPORT_STATUSES)}.")
        content = raw.get("content", "")
        ctx.check_text(content, f"text of {where}")
        for key in ("id", "parent_id", "model"):
            value = raw.get(key)
            if value is not None and not (isinstance(value, (str, int)) and not isinstance(value, bool)
                                          and len(str(value)) <= 200):
                raise InvalidOptionsError(f"The export's {where} has a {key} that is not a short text.")
        if raw.get("model") is not None:
            check_text(str(raw["model"]), f"model name of {where}")
        clean["messages"].append({**raw, "status": status, "content": content,
                                  "model": None if raw.get("model") is None else str(raw["model"]),
                                  "id": str(raw.get("id")),
                                  "parent_id": None if raw.get("parent_id") is None else str(raw["parent_id"])})
    return clean


def import_json(ctx: AppContext, owner: str, raw: bytes | str | dict[str, Any]) -> ChatView:
    """All or nothing: a refused file stores nothing, and the message says what to fix."""
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidOptionsError(f"That file is not valid JSON ({str(exc)[:120]}). Pick a chat exported as JSON.") from None
    data = _import_checked(ctx, data)
    try:
        with ctx.store.begin() as s:
            chat = repo.import_session(s, owner, data, kind=KIND)
            return _view(s, chat, "Imported.")
    except StorageError as exc:
        if getattr(exc, "__cause__", None) is not None:  # a database error: its text (SQL) is for the log only
            log.error("Importing a chat failed: %s", exc)
            raise InvalidOptionsError("The chat could not be stored (a field has a value the database refuses); "
                                      "nothing was imported.") from None
        raise InvalidOptionsError(str(exc)) from None
    except SQLAlchemyError:
        log.exception("Importing a chat failed")
        raise InvalidOptionsError("The chat could not be stored (a field has a value the database refuses); "
                                  "nothing was imported.") from None
