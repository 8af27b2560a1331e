"""Instruct templates per person: the model's own (the default), the known formats, and their own Jinja
templates (checked in the sandbox before they are saved). Applied by the chat service, so the page and the
API render a conversation the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from generators.base import CAP_INSTRUCT_TEMPLATE, InvalidOptionsError, SamplingParams
from generators.text.instruct import FORMATS, check_template
from storage import presets as repo

from .context import AppContext, check_text

MODEL_OWN = "Model's own"
MAX_NAME = 60
MAX_STOPS = 8  # SamplingParams' bound


@dataclass(frozen=True)
class Template:
    name: str
    source: str | None  # None: the model's own chat template
    stops: tuple[str, ...] = ()
    builtin: bool = True


def template_names(ctx: AppContext, owner: str) -> list[str]:
    """The model's own first, then the known formats, then the person's own."""
    with ctx.store.begin() as s:
        own = [r.name for r in repo.list_templates(s, owner)]
    return [MODEL_OWN, *FORMATS, *own]


def _builtin(name: str) -> str | None:
    return next((n for n in (MODEL_OWN, *FORMATS) if n.lower() == name.strip().lower()), None)


def get_template(ctx: AppContext, owner: str, name: str | None) -> Template:
    """The named template ('' or None: the model's own)."""
    check_text(name or "", "template name")
    if not name or not name.strip() or _builtin(name) == MODEL_OWN:
        return Template(MODEL_OWN, None)
    known = _builtin(name)
    if known:
        return Template(known, FORMATS[known].source, FORMATS[known].stops)
    with ctx.store.begin() as s:
        row = repo.find_template(s, owner, name.strip())
        if row is not None:
            return Template(row.name, row.source, (), False)
    raise InvalidOptionsError(f"There is no instruct template named {name.strip()[:60]!r}. "
                              f"Templates: {', '.join(template_names(ctx, owner))}.")


def apply(ctx: AppContext, model: str, template: Template, params: SamplingParams) -> tuple[str | None, SamplingParams]:
    """(template source for the request, params with the format's stop strings added). A model that cannot
    take a template is refused with what to pick instead."""
    if template.source is None:
        return None, params
    gen = ctx.registry.get(model)
    if CAP_INSTRUCT_TEMPLATE not in gen.info.capabilities:
        raise InvalidOptionsError(f"{model} applies its own template (it runs elsewhere or reads plain text); "
                                  f"pick the instruct template “{MODEL_OWN}”.")
    stops = tuple(dict.fromkeys((*params.stop, *template.stops)))[:MAX_STOPS]
    return template.source, params.model_copy(update={"stop": stops})


def save_template(ctx: AppContext, owner: str, name: Any, source: Any) -> Template:
    """Check the template in the sandbox, then save it under `name` (replacing the person's of that name)."""
    check_text(name if name is not None else "", "template name")
    clean = " ".join(str(name or "").split())
    if not clean:
        raise InvalidOptionsError("Give the template a name.")
    if len(clean) > MAX_NAME:
        raise InvalidOptionsError(f"A template name is at most {MAX_NAME} characters; this one has {len(clean)}.")
    if _builtin(clean):
        raise InvalidOptionsError(f"{clean!r} is a built-in template; pick another name.")
    check_text(source if source is not None else "", "template")
    checked = check_template(source)
    with ctx.store.begin() as s:
        row = repo.save_template(s, owner, clean, checked)
        return Template(row.name, row.source, (), False)


def delete_template(ctx: AppContext, owner: str, name: Any) -> None:
    check_text(name if name is not None else "", "template name")
    if not name or _builtin(str(name)):
        raise InvalidOptionsError("Built-in templates cannot be deleted; pick one of your own.")
    with ctx.store.begin() as s:
        repo.delete_template(s, owner, str(name).strip())
