"""How a ChatView looks in Gradio components (pure functions, no events)."""

from __future__ import annotations

from typing import Any

from ..services.chat import STATUS_NOTE, ChatView, ViewMessage

WAITING = "Writing the reply…"  # a reply that exists but has no text yet (reading the prompt)


def chatbot_messages(view: ChatView) -> list[dict[str, Any]]:
    """Messages for gr.Chatbot; replies that did not finish carry a visible note, and a reply that
    has no text yet shows what it waits for (the model loading, with its stage and time) instead of
    an empty bubble."""
    out: list[dict[str, Any]] = []
    for m in view.messages:
        content = m.content
        if m.status == "streaming" and not content:
            out.append({"role": m.role, "content": "", "metadata": {"title": view.loading or WAITING,
                                                                     "status": "pending"}})
            continue
        if m.status in STATUS_NOTE and m.status != "streaming":
            content = f"{content}\n\n*({STATUS_NOTE[m.status]})*" if content else f"*({STATUS_NOTE[m.status]})*"
        out.append({"role": m.role, "content": content})
    return out


def is_writing(view: ChatView) -> bool:
    """True while the last reply is still being written (or waits for its model)."""
    return bool(view.messages) and view.messages[-1].status == "streaming"


def default_focus(view: ChatView) -> str | None:
    """The newest message that has alternatives (what ◀ ▶ flip when nothing is selected)."""
    for m in reversed(view.messages):
        if m.branches > 1:
            return m.id
    return view.messages[-1].id if view.messages else None


def ordinal(view: ChatView, message: ViewMessage) -> int:
    """The message's number among its own kind: your 2nd message, the model's 3rd reply."""
    same = [m.id for m in view.messages if m.role == message.role]
    return same.index(message.id) + 1


def alternatives_label(view: ChatView, focus: str | None) -> str:
    """What ◀ ▶ act on: "Reply 2 · version 1 of 3", counted among replies (or your messages) only."""
    for m in view.messages:
        if m.id != focus:
            continue
        n = ordinal(view, m)
        name = f"Reply {n}" if m.role == "assistant" else f"Your message {n}"
        if m.status == "streaming":
            return f"{name}: being written…"
        if m.branches > 1:
            return f"{name} · version **{m.branch} of {m.branches}**"
        more = "↻ Regenerate" if m.role == "assistant" else "✎ edit it"
        return f"{name} · the only version ({more} makes another)"
    return ""
