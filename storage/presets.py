"""Repository functions for sampler presets, the default preset per model and instruct templates.

Like `repository`, each takes an open ORM session and never opens or commits one; every row is the
owner's own, and a row of someone else's looks the same as a missing one.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import InstructTemplate, ModelPreset, SamplerPreset, new_id
from .repository import NotFoundError

# ------------------------------------------------------------------ sampler presets


def list_presets(s: Session, owner: str) -> list[SamplerPreset]:
    return list(s.scalars(select(SamplerPreset).where(SamplerPreset.owner == owner)
                          .order_by(func.lower(SamplerPreset.name))))


def find_preset(s: Session, owner: str, name: str) -> SamplerPreset | None:
    """The owner's preset of that name (case-insensitive), or None."""
    return s.scalars(select(SamplerPreset).where(SamplerPreset.owner == owner,
                                                 func.lower(SamplerPreset.name) == name.lower())).first()


def get_preset(s: Session, owner: str, name: str) -> SamplerPreset:
    row = find_preset(s, owner, name)
    if row is None:
        raise NotFoundError(f"You have no preset named {name!r}.")
    return row


def save_preset(s: Session, owner: str, name: str, params: dict) -> SamplerPreset:
    """Create the preset, or replace the values of the owner's preset of that name."""
    row = find_preset(s, owner, name)
    if row is None:
        row = SamplerPreset(id=new_id(), owner=owner, name=name, params=dict(params))
        s.add(row)
    else:
        row.params = dict(params)
    s.flush()
    return row


def rename_preset(s: Session, owner: str, name: str, new_name: str) -> SamplerPreset:
    """Rename, and point the owner's model defaults that used the old name at the new one."""
    row = get_preset(s, owner, name)
    for default in s.scalars(select(ModelPreset).where(ModelPreset.owner == owner, ModelPreset.preset == row.name)):
        default.preset = new_name
    row.name = new_name
    s.flush()
    return row


def delete_preset(s: Session, owner: str, name: str) -> None:
    """Delete, and forget the model defaults that named it (those models start from the workspace again)."""
    row = get_preset(s, owner, name)
    for default in s.scalars(select(ModelPreset).where(ModelPreset.owner == owner, ModelPreset.preset == row.name)):
        s.delete(default)
    s.delete(row)
    s.flush()


# ------------------------------------------------------------------ the default preset per model


def model_defaults(s: Session, owner: str) -> dict[str, str]:
    """Model name → preset name, for the owner."""
    return {r.model: r.preset for r in s.scalars(select(ModelPreset).where(ModelPreset.owner == owner))}


def set_model_default(s: Session, owner: str, model: str, preset: str | None) -> None:
    """Make `preset` the owner's default for `model`; None forgets the default."""
    row = s.scalars(select(ModelPreset).where(ModelPreset.owner == owner, ModelPreset.model == model)).first()
    if preset is None:
        if row is not None:
            s.delete(row)
    elif row is None:
        s.add(ModelPreset(id=new_id(), owner=owner, model=model, preset=preset))
    else:
        row.preset = preset
    s.flush()


# ------------------------------------------------------------------ instruct templates


def list_templates(s: Session, owner: str) -> list[InstructTemplate]:
    return list(s.scalars(select(InstructTemplate).where(InstructTemplate.owner == owner)
                          .order_by(func.lower(InstructTemplate.name))))


def find_template(s: Session, owner: str, name: str) -> InstructTemplate | None:
    return s.scalars(select(InstructTemplate).where(InstructTemplate.owner == owner,
                                                    func.lower(InstructTemplate.name) == name.lower())).first()


def save_template(s: Session, owner: str, name: str, source: str) -> InstructTemplate:
    row = find_template(s, owner, name)
    if row is None:
        row = InstructTemplate(id=new_id(), owner=owner, name=name, source=source)
        s.add(row)
    else:
        row.source = source
    s.flush()
    return row


def delete_template(s: Session, owner: str, name: str) -> None:
    row = find_template(s, owner, name)
    if row is None:
        raise NotFoundError(f"You have no instruct template named {name!r}.")
    s.delete(row)
    s.flush()
