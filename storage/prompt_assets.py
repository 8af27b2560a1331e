"""Repository functions for prompt assets: characters, personas, saved prompts.

Like `repository`, each takes an open ORM session and never opens or commits one. Every lookup is by
owner: a row of someone else reads exactly like a missing one.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from .models import Character, Persona, SavedPrompt, new_id
from .repository import NotFoundError, is_row_id

Row = TypeVar("Row", Character, Persona, SavedPrompt)
WHAT = {Character: "character", Persona: "persona", SavedPrompt: "saved prompt"}


def _pattern(query: str) -> str:
    return "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def get_owned(s: Session, model: type[Row], owner: str, row_id: str | None) -> Row:
    row = s.get(model, row_id) if is_row_id(row_id) else None
    if row is None or row.owner != owner:
        raise NotFoundError(f"No {WHAT[model]} with that id was found; it may have been deleted.")
    return row


def create_owned(s: Session, model: type[Row], owner: str, **values: Any) -> Row:
    row = model(id=new_id(), owner=owner, **values)
    s.add(row)
    s.flush()
    return row


def update_owned(s: Session, model: type[Row], owner: str, row_id: str, **values: Any) -> Row:
    row = get_owned(s, model, owner, row_id)
    for key, value in values.items():
        setattr(row, key, value)
    s.flush()
    return row


def delete_owned(s: Session, model: type[Row], owner: str, row_id: str) -> None:
    s.delete(get_owned(s, model, owner, row_id))


def list_characters(s: Session, owner: str, query: str = "", limit: int = 500) -> list[Character]:
    """By name; `query` matches the name, description, creator, creator's notes or tags (case-insensitive)."""
    stmt = select(Character).where(Character.owner == owner)
    q = query.strip()
    if q:
        p = _pattern(q)
        stmt = stmt.where(or_(*(col.ilike(p, escape="\\") for col in (
            Character.name, Character.description, Character.creator, Character.creator_notes))))
    rows = list(s.scalars(stmt.order_by(Character.name, Character.created_at).limit(limit)))
    if q:  # tags are JSON: match them here (a tag search must not miss cards whose text does not say it)
        seen = {r.id for r in rows}
        lowered = q.lower()
        for row in s.scalars(select(Character).where(Character.owner == owner)):
            if row.id not in seen and any(lowered in str(t).lower() for t in row.tags or ()):
                rows.append(row)
        rows.sort(key=lambda r: (r.name.lower(), r.created_at))
    return rows


def list_personas(s: Session, owner: str) -> list[Persona]:
    return list(s.scalars(select(Persona).where(Persona.owner == owner).order_by(Persona.name, Persona.created_at)))


def default_persona(s: Session, owner: str) -> Persona | None:
    return s.scalar(select(Persona).where(Persona.owner == owner, Persona.is_default.is_(True)).limit(1))


def set_default_persona(s: Session, owner: str, persona_id: str | None) -> None:
    """Make one persona the owner's default (None: no default)."""
    if persona_id is not None:
        get_owned(s, Persona, owner, persona_id)
    s.execute(update(Persona).where(Persona.owner == owner).values(is_default=False))
    if persona_id is not None:
        s.execute(update(Persona).where(Persona.id == persona_id).values(is_default=True))


def list_prompts(s: Session, owner: str, query: str = "") -> list[SavedPrompt]:
    stmt = select(SavedPrompt).where(SavedPrompt.owner == owner)
    if query.strip():
        p = _pattern(query.strip())
        stmt = stmt.where(or_(SavedPrompt.name.ilike(p, escape="\\"), SavedPrompt.text.ilike(p, escape="\\")))
    return list(s.scalars(stmt.order_by(SavedPrompt.name, SavedPrompt.created_at)))
