"""One module per workspace; each has build(ctx) that lays out and wires its components."""

from typing import Any

# Quick handlers (no model work) run through the queue too, so a gr.Error reaches the page as
# a readable toast, but with no concurrency limit, so they never wait behind a generation.
FAST: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden"}


def list_label(kind: str, query: str, count: int) -> str:
    """The label of a chat or story list: says so when a search finds nothing (an empty list is silent)."""
    query = " ".join((query or "").split())
    if count:
        return kind.capitalize()
    if query:
        return f"{kind.capitalize()}: none match “{query[:40]}”"
    return f"{kind.capitalize()}: none yet"
