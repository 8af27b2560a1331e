"""The prompt library: saved prompts per owner, with `{{variables}}` asked for when one is inserted.

A variable is `{{name}}` (letters, digits, spaces, `_` and `-`); the character macros (`{{char}}`,
`{{user}}`, …) are not variables: they stay in the text and a character chat fills them in. Export and
import use one JSON shape: `{"format": "aigc-studio.prompts.v1", "prompts": [{"name", "text"}, ...]}`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from generators.base import InvalidOptionsError
from storage import prompt_assets as assets
from storage.models import SavedPrompt

from .context import AppContext, check_text

FORMAT = "aigc-studio.prompts.v1"
MAX_VARIABLES = 8
MAX_PROMPTS_PER_IMPORT = 2_000
MAX_IMPORT_BYTES = 10 * 2**20
NAME_CHARS = 200
VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][\w \-]{0,39}?)\s*\}\}")
RESERVED = {"char", "user", "bot", "original", "description", "personality", "scenario", "persona"}  # character macros


@dataclass(frozen=True)
class PromptView:
    id: str
    name: str
    text: str
    variables: tuple[str, ...]


def variables(text: str) -> tuple[str, ...]:
    """The distinct variables of a prompt, in order of first use."""
    seen: dict[str, None] = {}
    for m in VARIABLE.finditer(text or ""):
        if m.group(1).strip().lower() not in RESERVED:
            seen.setdefault(m.group(1).strip(), None)
    return tuple(seen)


def fill(text: str, values: dict[str, str]) -> str:
    """The prompt with its variables replaced (in one pass); a variable without a value is refused."""
    missing = [v for v in variables(text) if not (values.get(v) or "").strip()]
    if missing:
        raise InvalidOptionsError("Fill in " + ", ".join(f"“{m}”" for m in missing) + " first.")

    def sub(m: re.Match[str]) -> str:
        name = m.group(1).strip()
        return values[name] if name in values and name.lower() not in RESERVED else m.group(0)

    return VARIABLE.sub(sub, text)


def _checked(ctx: AppContext, name: Any, text: Any, where: str = "") -> tuple[str, str]:
    check_text(name if name is not None else "", f"name{where}", NAME_CHARS)
    check_text(text if text is not None else "", f"text{where}", ctx.config.max_prompt_chars)
    name, text = (name or "").strip(), text or ""
    if not name:
        raise InvalidOptionsError(f"A saved prompt needs a name{where}.")
    if not text.strip():
        raise InvalidOptionsError(f"A saved prompt needs some text{where}.")
    if len(variables(text)) > MAX_VARIABLES:
        raise InvalidOptionsError(f"The prompt{where} has {len(variables(text))} variables; at most {MAX_VARIABLES} "
                                  "can be asked for.")
    return name, text


def _view(row: SavedPrompt) -> PromptView:
    return PromptView(row.id, row.name, row.text, variables(row.text))


def list_prompts(ctx: AppContext, owner: str, query: str = "") -> list[PromptView]:
    check_text(query or "", "search")
    with ctx.store.begin() as s:
        return [_view(r) for r in assets.list_prompts(s, owner, (query or "")[:200])]


def get_prompt(ctx: AppContext, owner: str, prompt_id: str) -> PromptView:
    with ctx.store.begin() as s:
        return _view(assets.get_owned(s, SavedPrompt, owner, prompt_id))


def save_prompt(ctx: AppContext, owner: str, prompt_id: str | None, name: str, text: str) -> PromptView:
    name, text = _checked(ctx, name, text)
    with ctx.store.begin() as s:
        if prompt_id:
            return _view(assets.update_owned(s, SavedPrompt, owner, prompt_id, name=name, text=text))
        return _view(assets.create_owned(s, SavedPrompt, owner, name=name, text=text))


def delete_prompt(ctx: AppContext, owner: str, prompt_id: str) -> None:
    with ctx.store.begin() as s:
        assets.delete_owned(s, SavedPrompt, owner, prompt_id)


def export_prompts(ctx: AppContext, owner: str) -> dict[str, Any]:
    return {"format": FORMAT, "prompts": [{"name": p.name, "text": p.text} for p in list_prompts(ctx, owner)]}


def import_prompts(ctx: AppContext, owner: str, raw: bytes | str) -> int:
    """All or nothing: every prompt is checked before any is stored. Returns how many were added."""
    if len(raw) > MAX_IMPORT_BYTES:
        raise InvalidOptionsError(f"The file is larger than {MAX_IMPORT_BYTES // 2**20} MB.")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidOptionsError(f"That file is not valid JSON ({str(exc)[:120]}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("prompts"), list):
        raise InvalidOptionsError(f"This is not a prompt library export (expected \"format\": \"{FORMAT}\" "
                                  "and a list of \"prompts\").")
    items = data["prompts"]
    if len(items) > MAX_PROMPTS_PER_IMPORT:
        raise InvalidOptionsError(f"The file holds {len(items):,} prompts; at most {MAX_PROMPTS_PER_IMPORT:,} "
                                  "can be imported at once.")
    clean = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise InvalidOptionsError(f"Prompt {n} of the file is not an object with a name and a text.")
        clean.append(_checked(ctx, item.get("name"), item.get("text"), f" (prompt {n} of the file)"))
    with ctx.store.begin() as s:
        for name, text in clean:
            assets.create_owned(s, SavedPrompt, owner, name=name, text=text)
    return len(clean)
