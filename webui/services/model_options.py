"""Change how a model loads (quantization, device) without losing the one that works.

Apply is checked first (the registry refuses options that do not validate or cannot work on this
machine, with the reason, and leaves the model as it was). A model that was loaded is loaded again at
once with the new options, so the result is known now rather than on someone's next message; if that
load fails, the previous options are put back and loaded again, and the error says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from generators.base import CAP_QUANTIZATION, InvalidOptionsError, LoadFailedError, StudioError

from .context import AppContext


@dataclass(frozen=True)
class Applied:
    name: str
    options: dict[str, Any]  # the updates now in force
    loaded: bool
    memory_bytes: int = 0
    changed: bool = True

    @property
    def message(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.options.items())
        if not self.changed:
            return f"**{self.name}** already uses {settings}; nothing changed."
        if self.loaded:
            return f"**{self.name}** is loaded with {settings} ({self.memory_bytes / 2**20:.0f} MB)."
        return f"**{self.name}** will load with {settings} on its next use."


def apply_options(ctx: AppContext, name: str, progress: Callable[[str], None] | None = None, **updates: Any) -> Applied:
    gen = ctx.registry.get(name)
    if CAP_QUANTIZATION not in gen.info.capabilities:
        raise InvalidOptionsError(f"{name} ({gen.info.plugin}) has no quantization or device options.")
    before = gen.options.model_dump()
    previous = {k: before.get(k) for k in updates}
    if previous == updates:
        return Applied(name, updates, gen.loaded, gen.memory_bytes(), changed=False)
    was_loaded = gen.loaded
    ctx.registry.reconfigure(name, **updates)  # refuses (and keeps the working model) before changing anything
    if not was_loaded:
        return Applied(name, updates, False)
    try:
        new = ctx.registry.load(name, progress)
    except StudioError as exc:
        ctx.registry.reconfigure(name, **previous)
        ctx.registry.load(name, progress)
        back = ", ".join(f"{k}={v}" for k, v in previous.items())
        raise LoadFailedError(f"{exc} {name} is back on {back} and loaded as before.") from exc
    return Applied(name, updates, True, new.memory_bytes())
