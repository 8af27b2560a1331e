"""How a ChatView looks in Gradio components (pure functions, no events)."""

from __future__ import annotations

from typing import Any

from ..services.chat import STATUS_NOTE, ChatView


def chatbot_messages(view: ChatView) -> list[dict[str, Any]]:
    """Messages for gr.Chatbot; replies that did not finish carry a visible note."""
    out = []
    for m in view.messages:
        content = m.content
        if m.status in STATUS_NOTE and m.status != "streaming":
            content = f"{content}\n\n*({STATUS_NOTE[m.status]})*" if content else f"*({STATUS_NOTE[m.status]})*"
        out.append({"role": m.role, "content": content})
    return out


def default_focus(view: ChatView) -> str | None:
    """The newest message that has alternatives (what ◀ ▶ flip when nothing is selected)."""
    for m in reversed(view.messages):
        if m.branches > 1:
            return m.id
    return view.messages[-1].id if view.messages else None


def alternatives_label(view: ChatView, focus: str | None) -> str:
    for pos, m in enumerate(view.messages, start=1):
        if m.id == focus:
            kind = "reply" if m.role == "assistant" else "message"
            if m.branches > 1:
                return f"{kind.capitalize()} {pos}: version **{m.branch} of {m.branches}**"
            return f"{kind.capitalize()} {pos}: no alternatives yet"
    return ""
