"""Whose model a name is, for the views every user shares (the arena leaderboard, the metrics, the ratings).

A person's own model (a finished training job, registered as `OWNER/NAME`) is usable by its owner
everywhere (workspaces, API, arena, metrics) and never shown to anyone else: the shared views drop the
rows that name someone else's own model. A model whose job was deleted is no longer registered; its
rows were all made by its owner (no one else could use it), so a row's author tells it apart.
"""

from __future__ import annotations

from generators.base import UnknownGeneratorError

from .context import AppContext


def model_owner(ctx: AppContext, model: str | None, author: str | None = None) -> str | None:
    """The owner of `model` when it is someone's own model, None when it is shared.

    `author`: who made the row that names it (a battle, a rating), for a model no longer registered."""
    if not model:
        return None
    try:
        return ctx.registry.owner_of(model)
    except UnknownGeneratorError:
        pass
    if author and model.startswith(f"{author}/"):
        return author  # a deleted own model (OWNER/NAME, used by its owner only)
    return None


def shown_to(ctx: AppContext, model: str | None, viewer: str | None, author: str | None = None) -> bool:
    """Whether `viewer` may see rows naming `model` (shared models: everyone; own models: their owner)."""
    owner = model_owner(ctx, model, author)
    return owner is None or owner == viewer
