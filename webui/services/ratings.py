"""Ratings: thumbs up/down and an optional comment on any chat reply, story passage or image,
stored with the generation record that made it; a table of ratings per generator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select

from generators.base import InvalidOptionsError
from storage import repository as repo
from storage.models import Generation, Message, Rating, SessionRecord, StoryPassage

from .context import AppContext, check_text
from .own_models import shown_to

KINDS = ("message", "passage", "image")
VALUES = {"up": 1, "good": 1, "1": 1, 1: 1, "down": -1, "bad": -1, "-1": -1, -1: -1}
COMMENT_LIMIT = 2000


@dataclass(frozen=True)
class GeneratorRatings:
    generator: str
    up: int
    down: int
    comments: int

    @property
    def total(self) -> int:
        return self.up + self.down

    @property
    def share_up(self) -> float:
        return self.up / self.total if self.total else 0.0


def _target(s: Any, owner: str, kind: str, target_id: str) -> tuple[str | None, str]:
    """(generation id, generator name) of an output the owner may rate; 'not found' otherwise."""
    if kind not in KINDS:
        raise InvalidOptionsError(f"Rate a {', a '.join(KINDS)}; got {kind!r}.")
    if not repo.is_row_id(target_id):
        raise repo.NotFoundError("That output does not exist (it may have been deleted).")
    if kind == "image":
        image = repo.get_image(s, owner, target_id)
        return image.generation_id, image.model
    row_cls = Message if kind == "message" else StoryPassage
    row = s.get(row_cls, target_id)
    session = s.get(SessionRecord, row.session_id) if row is not None else None
    if row is None or session is None or session.owner != owner:
        raise repo.NotFoundError("That output does not exist (it may have been deleted).")
    author = row.role if kind == "message" else row.author
    if author not in ("assistant", "model"):
        raise InvalidOptionsError("Only what a model wrote can be rated.")
    generation = s.get(Generation, row.generation_id) if row.generation_id else None
    return row.generation_id, generation.generator if generation else (getattr(row, "model", None) or "unknown")


def rate(ctx: AppContext, owner: str, kind: str, target_id: str, value: Any, comment: Any = "") -> int:
    """Store (or replace) this owner's rating of one output; `value` None clears it. Returns the value."""
    comment = "" if comment is None else comment
    check_text(comment, "comment", COMMENT_LIMIT)
    if isinstance(value, bool):
        raise InvalidOptionsError("A rating is up (+1) or down (-1).")
    if value is None or value == "" or value == 0:
        with ctx.store.begin() as s:
            _target(s, owner, kind, target_id)
            existing = s.scalars(select(Rating).where(Rating.owner == owner, Rating.target_kind == kind,
                                                     Rating.target_id == target_id)).first()
            if existing:
                s.delete(existing)
        return 0
    try:
        number = VALUES[value]
    except (KeyError, TypeError):
        raise InvalidOptionsError("A rating is up (+1) or down (-1).") from None
    with ctx.store.begin() as s:
        generation_id, generator = _target(s, owner, kind, target_id)
        existing = s.scalars(select(Rating).where(Rating.owner == owner, Rating.target_kind == kind,
                                                 Rating.target_id == target_id)).first()
        if existing:
            existing.value, existing.comment = number, comment.strip()
        else:
            s.add(Rating(owner=owner, target_kind=kind, target_id=target_id, generation_id=generation_id,
                         generator=generator, value=number, comment=comment.strip()))
    return number


def rating_of(ctx: AppContext, owner: str, kind: str, target_id: str) -> tuple[int, str]:
    with ctx.store.begin() as s:
        row = s.scalars(select(Rating).where(Rating.owner == owner, Rating.target_kind == kind,
                                            Rating.target_id == target_id)).first()
        return (row.value, row.comment) if row else (0, "")


def by_generator(ctx: AppContext, viewer: str | None = None) -> list[GeneratorRatings]:
    """Counts over all users (no content, so nothing of anyone's work is shown), most rated first; someone
    else's own model (a finished training job) is left out (None: only the shared models)."""
    with ctx.store.begin() as s:
        rows = s.execute(
            select(Rating.generator, Rating.owner, func.sum(case((Rating.value > 0, 1), else_=0)),
                   func.sum(case((Rating.value < 0, 1), else_=0)), func.sum(case((Rating.comment != "", 1), else_=0)))
            .group_by(Rating.generator, Rating.owner)).all()
    counts: dict[str, list[int]] = {}
    for generator, rater, up, down, comments in rows:
        if shown_to(ctx, generator, viewer, rater):
            total = counts.setdefault(generator, [0, 0, 0])
            total[0], total[1], total[2] = total[0] + int(up or 0), total[1] + int(down or 0), total[2] + int(comments or 0)
    found = [GeneratorRatings(g, up, down, c) for g, (up, down, c) in counts.items()]
    return sorted(found, key=lambda r: (-r.total, r.generator))

