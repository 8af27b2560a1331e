"""Sampler presets: the built-in ones and each person's own, the default preset per model, export/import.

A preset holds every sampler setting (SamplingParams). Picking one in Chat, Story or Arena loads its values
into the page's sliders, where single values can still be changed; the HTTP API names one in the `preset`
extension field and any sampler field it also sends overrides the preset's value. `resolve` is that one rule,
used by both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from generators.base import InvalidOptionsError, SamplingParams, validate_model
from storage import presets as repo
from storage.db import StorageError

from .context import AppContext, check_text
from .generation import sampling_params

FORMAT = "aigc-studio.sampler-presets.v1"
MAX_NAME = 60
MAX_IMPORT_BYTES = 1_000_000
MAX_IMPORT_PRESETS = 200
MODEL_DEFAULT = "default"  # in the API: the preset the owner made the default for the requested model


@dataclass(frozen=True)
class Preset:
    name: str
    builtin: bool
    params: dict[str, Any]  # every SamplingParams field, JSON-ready

    @property
    def label(self) -> str:
        return f"{self.name} (built-in)" if self.builtin else self.name


def _full(values: dict[str, Any]) -> dict[str, Any]:
    return SamplingParams(**values).model_dump(mode="json")


# What each is for, in the words of the tools people come from: greedy for reproducible answers and tests,
# balanced for chat with the small default model (repetition penalty 1.1: without it, it loops), creative
# for brainstorming (min-p keeps it coherent at temperature 1, XTC and DRY steer it off the obvious path),
# a story preset for long prose (DRY instead of a strong repetition penalty, which harms names and prose).
BUILTIN: dict[str, dict[str, Any]] = {
    "Deterministic": _full({"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.1}),
    "Balanced": _full({"temperature": 0.7, "top_p": 0.95, "top_k": 50, "min_p": 0.05, "repetition_penalty": 1.1}),
    "Creative": _full({"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.05, "repetition_penalty": 1.0,
                       "dry_multiplier": 0.8, "xtc_threshold": 0.1, "xtc_probability": 0.5}),
    "Storywriter": _full({"temperature": 0.9, "top_p": 1.0, "top_k": 0, "min_p": 0.05, "repetition_penalty": 1.05,
                          "dry_multiplier": 0.8, "dry_allowed_length": 2, "max_new_tokens": 200}),
}


def builtin_presets() -> list[Preset]:
    return [Preset(name, True, dict(params)) for name, params in BUILTIN.items()]


def _builtin_named(name: str) -> str | None:
    return next((b for b in BUILTIN if b.lower() == name.strip().lower()), None)


def clean_name(value: Any) -> str:
    """A preset name a person typed: text, 1 to MAX_NAME characters, not a built-in's (nor 'default')."""
    if value is None:
        value = ""
    check_text(value, "preset name")
    name = " ".join(value.split())
    if not name:
        raise InvalidOptionsError("Give the preset a name.")
    if len(name) > MAX_NAME:
        raise InvalidOptionsError(f"A preset name is at most {MAX_NAME} characters; this one has {len(name)}.")
    if _builtin_named(name) or name.lower() == MODEL_DEFAULT:
        raise InvalidOptionsError(f"{name!r} is the name of a built-in preset; pick another name.")
    return name


def _checked(values: Any, where: str = "preset") -> dict[str, Any]:
    """Every sampler field of a preset, validated (unknown fields and bad values refused with the reason)."""
    if not isinstance(values, dict):
        raise InvalidOptionsError(f"The {where}'s settings must be an object of sampler fields.")
    params = validate_model(SamplingParams, {k: v for k, v in values.items() if v is not None}, f"{where} setting")
    return params.model_dump(mode="json")


# ------------------------------------------------------------------ reading


def list_presets(ctx: AppContext, owner: str) -> list[Preset]:
    """The built-ins first, then the owner's own by name."""
    with ctx.store.begin() as s:
        own = [Preset(r.name, False, _full_or_default(r.params)) for r in repo.list_presets(s, owner)]
    return builtin_presets() + own


def _full_or_default(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored preset with the fields added since it was saved at their defaults."""
    known = {k: v for k, v in stored.items() if k in SamplingParams.model_fields}
    try:
        return _full(known)
    except ValueError:  # saved under other bounds: keep what still validates
        return SamplingParams().model_dump(mode="json")


def get_preset(ctx: AppContext, owner: str, name: str) -> Preset:
    check_text(name, "preset name")
    builtin = _builtin_named(name)
    if builtin:
        return Preset(builtin, True, dict(BUILTIN[builtin]))
    with ctx.store.begin() as s:
        row = repo.find_preset(s, owner, name.strip())
        if row is not None:
            return Preset(row.name, False, _full_or_default(row.params))
    names = ", ".join(p.name for p in list_presets(ctx, owner))
    raise InvalidOptionsError(f"There is no preset named {name.strip()[:60]!r}. Presets: {names}.")


def default_preset(ctx: AppContext, owner: str, model: str) -> str | None:
    """The name of the preset the owner starts `model` with, if they chose one."""
    with ctx.store.begin() as s:
        return repo.model_defaults(s, owner).get(model)


def named_preset(ctx: AppContext, owner: str, preset: str | None, model: str | None = None) -> Preset | None:
    """The named preset (MODEL_DEFAULT: the owner's default for `model`; None if there is none)."""
    if preset == MODEL_DEFAULT:
        preset = default_preset(ctx, owner, model or ctx.default_model)
    return get_preset(ctx, owner, preset) if preset else None


def resolve(ctx: AppContext, owner: str, preset: str | None, values: dict[str, Any] | None = None,
            model: str | None = None) -> SamplingParams:
    """The sampler settings of a request: the preset's (MODEL_DEFAULT: the owner's default for `model`,
    none if there is none), with every value given in `values` (None = not given) on top."""
    chosen = named_preset(ctx, owner, preset, model)
    base = chosen.params if chosen else {}
    given = {k: v for k, v in (values or {}).items() if v is not None}
    return sampling_params({**base, **given}, ctx)


# ------------------------------------------------------------------ writing


def save_preset(ctx: AppContext, owner: str, name: Any, values: dict[str, Any]) -> Preset:
    """Save the settings under `name` (replacing the owner's preset of that name)."""
    name = clean_name(name)
    params = _checked(values)
    with ctx.store.begin() as s:
        row = repo.save_preset(s, owner, name, params)
        return Preset(row.name, False, dict(row.params))


def _own(name: Any) -> str:
    check_text(name if name is not None else "", "preset name")
    if not name or _builtin_named(name):
        raise InvalidOptionsError("Built-in presets cannot be renamed or deleted; pick one of your own.")
    return str(name).strip()


def rename_preset(ctx: AppContext, owner: str, name: Any, new_name: Any) -> Preset:
    old, new = _own(name), clean_name(new_name)
    with ctx.store.begin() as s:
        clash = repo.find_preset(s, owner, new)
        existing = repo.get_preset(s, owner, old)
        if clash is not None and clash.id != existing.id:
            raise InvalidOptionsError(f"You already have a preset named {clash.name!r}; delete it or pick another name.")
        row = repo.rename_preset(s, owner, old, new)
        return Preset(row.name, False, dict(row.params))


def delete_preset(ctx: AppContext, owner: str, name: Any) -> None:
    with ctx.store.begin() as s:
        repo.delete_preset(s, owner, _own(name))


def set_default_preset(ctx: AppContext, owner: str, model: str, preset: str | None) -> str | None:
    """Make `preset` the default for `model` (None or '' forgets it); returns the stored name."""
    ctx.registry.get(model)  # raises UnknownGeneratorError with the list of models
    name = get_preset(ctx, owner, preset).name if preset else None
    with ctx.store.begin() as s:
        repo.set_model_default(s, owner, model, name)
    return name


# ------------------------------------------------------------------ export / import


def export_presets(ctx: AppContext, owner: str, names: list[str] | None = None) -> dict[str, Any]:
    """The owner's presets (or the named ones, built-ins included when named) as one JSON document."""
    chosen = [get_preset(ctx, owner, n) for n in names] if names else \
        [p for p in list_presets(ctx, owner) if not p.builtin]
    return {"format": FORMAT, "presets": [{"name": p.name, "params": p.params} for p in chosen]}


# A preset file of SillyTavern (text completion and chat completion) or text-generation-webui: its field →
# ours. Their other samplers (mirostat, tfs, top-a, …) have no equivalent here and are listed as ignored.
FOREIGN_FIELDS = {
    "temp": "temperature", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
    "typical_p": "typical_p", "typical": "typical_p", "rep_pen": "repetition_penalty",
    "repetition_penalty": "repetition_penalty", "presence_pen": "presence_penalty",
    "presence_penalty": "presence_penalty", "freq_pen": "frequency_penalty", "frequency_penalty": "frequency_penalty",
    "dry_multiplier": "dry_multiplier", "dry_base": "dry_base", "dry_allowed_length": "dry_allowed_length",
    "dry_sequence_breakers": "dry_sequence_breakers", "xtc_threshold": "xtc_threshold",
    "xtc_probability": "xtc_probability", "genamt": "max_new_tokens", "max_new_tokens": "max_new_tokens",
    "openai_max_tokens": "max_new_tokens", "seed": "seed",
}
OFF_WHEN_ZERO = {"top_p": 1.0, "typical_p": 1.0}  # their 0 means off; ours is 1


@dataclass(frozen=True)
class ImportResult:
    names: list[str]
    ignored: list[str]  # fields of a foreign preset that have no equivalent here


def from_foreign(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The sampler fields of a SillyTavern / text-generation-webui preset, and the names of those ignored."""
    values: dict[str, Any] = {}
    ignored = []
    for key, value in data.items():
        ours = FOREIGN_FIELDS.get(key)
        if ours is None:
            ignored.append(str(key)[:40])
            continue
        if ours == "dry_sequence_breakers" and isinstance(value, str):  # they store it as JSON text
            try:
                value = json.loads(value)
            except ValueError:
                raise InvalidOptionsError("The preset's dry_sequence_breakers is not a JSON list of strings.") from None
        if ours == "seed" and isinstance(value, int) and value < 0:  # -1: random
            value = None
        if ours in OFF_WHEN_ZERO and value == 0:
            value = OFF_WHEN_ZERO[ours]
        values[ours] = value
    return values, ignored


def import_presets(ctx: AppContext, owner: str, raw: bytes | str | dict[str, Any], name: str | None = None) -> ImportResult:
    """All or nothing: every preset is checked before any is stored; a preset named like one of the owner's
    replaces it. Reads the studio's export, or one preset of SillyTavern or text-generation-webui saved as JSON
    (stored under `name`, e.g. the file's name)."""
    if isinstance(raw, (bytes, str)) and len(raw) > MAX_IMPORT_BYTES:
        raise InvalidOptionsError(f"That file is {len(raw):,} bytes; a presets file is at most {MAX_IMPORT_BYTES:,}.")
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidOptionsError(f"That file is not valid JSON ({str(exc)[:120]}). "
                                  "Pick a presets file exported by the studio.") from None
    ignored: list[str] = []
    if isinstance(data, dict) and "format" not in data and FOREIGN_FIELDS.keys() & data.keys():
        values, ignored = from_foreign(data)
        data = {"format": FORMAT, "presets": [{"name": name or "Imported preset", "params": values}]}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("presets"), list):
        raise InvalidOptionsError(f'This is not a presets file of the studio (expected "format": "{FORMAT}" '
                                  'and a list of "presets"), nor a SillyTavern or text-generation-webui preset.')
    entries = data["presets"]
    if not entries:
        raise InvalidOptionsError("The file holds no presets.")
    if len(entries) > MAX_IMPORT_PRESETS:
        raise InvalidOptionsError(f"The file holds {len(entries):,} presets; at most {MAX_IMPORT_PRESETS} "
                                  "can be imported at once.")
    checked: dict[str, dict[str, Any]] = {}
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise InvalidOptionsError(f"Preset {n} of the file is not an object.")
        try:
            name = clean_name(entry.get("name"))
        except InvalidOptionsError as exc:
            raise InvalidOptionsError(f"Preset {n} of the file: {exc}") from None
        checked[name] = _checked(entry.get("params"), f"preset {name!r}")
    try:
        with ctx.store.begin() as s:
            for name, params in checked.items():
                repo.save_preset(s, owner, name, params)
    except StorageError as exc:
        raise InvalidOptionsError(f"The presets could not be stored ({exc}); nothing was imported.") from None
    return ImportResult(list(checked), ignored)
