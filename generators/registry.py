"""The registry: which plugins exist, which model instances are configured, which are loaded.

Plugins (classes) are discovered once, from the entry-point group `aigc_studio.generators`
— the built-ins are registered there too, exactly like third-party plugins. Model
instances (a plugin + load options under a name) come from the user's model list. Models
load lazily on first use; a memory budget unloads the least recently used idle model
before loading one that would not fit.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from .base import BusyError, Generator, LoadFailedError, ProgressFn, StudioError, UnknownGeneratorError
from .fair import FairSlots

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "aigc_studio.generators"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the user's model list."""

    name: str
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)
    concurrency: int | None = None  # simultaneous generations of this model (None: the registry's default)
    owner: str | None = None  # a person's own model (a finished training job): only they see and use it


@dataclass
class _Slot:
    generator: Generator
    semaphore: FairSlots  # round-robin across the owners waiting for this model
    in_use: int = 0
    owner: str | None = None  # None: shared by everyone


def discover_plugins(group: str = ENTRY_POINT_GROUP) -> dict[str, type[Generator]]:
    """Load every plugin class of the entry-point group; broken or duplicate ones are skipped."""
    found: dict[str, type[Generator]] = {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
            plugin_id = cls.info.plugin
        except Exception:  # a broken third-party plugin must not take the studio down
            log.exception("Skipping generator plugin %r: it failed to import", ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Generator)):
            log.error("Skipping %r: it is not a Generator subclass", ep.value)
            continue
        if plugin_id in found and found[plugin_id] is not cls:
            log.error("Skipping %r: plugin id %r is already registered by %r", ep.value, plugin_id, found[plugin_id])
            continue
        found[plugin_id] = cls
    return found


class Registry:
    """Plugins, configured model instances, lazy loading and the memory budget."""

    def __init__(
        self,
        plugins: dict[str, type[Generator]],
        *,
        memory_budget_bytes: int | None = None,
        cache_dir: str | None = None,
        concurrency: int | None = None,
        acquire_timeout_s: float = 600.0,
    ) -> None:
        self.plugins = dict(plugins)
        self.memory_budget_bytes = memory_budget_bytes
        self.cache_dir = cache_dir
        self.concurrency = concurrency
        self.acquire_timeout_s = acquire_timeout_s
        self._slots: dict[str, _Slot] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # loaded models, least recent first
        self._lock = threading.RLock()

    @classmethod
    def discover(cls, models: list[ModelSpec] = (), **kwargs: Any) -> "Registry":
        reg = cls(discover_plugins(), **kwargs)
        for spec in models:
            reg.add(spec)
        return reg

    # ------------------------------------------------------------ instances
    def add(self, spec: ModelSpec) -> Generator:
        """Create a model instance from a spec (not loaded yet)."""
        with self._lock:
            if spec.name in self._slots:
                raise StudioError(f"A model named {spec.name!r} is already configured; pick another name.")
            plugin = self.plugins.get(spec.plugin)
            if plugin is None:
                known = ", ".join(sorted(self.plugins)) or "none"
                raise UnknownGeneratorError(f"No generator plugin {spec.plugin!r} is installed (installed: {known}).")
            gen = plugin(spec.name, spec.options, cache_dir=self.cache_dir)
            # unset: the plugin's own (a batching LM decodes its batch together; others one at a time)
            self._slots[spec.name] = _Slot(gen, FairSlots(spec.concurrency or self.concurrency or gen.default_concurrency),
                                           owner=spec.owner)
            return gen

    def reconfigure(self, name: str, **option_updates: Any) -> Generator:
        """Replace a model's load options (e.g. quantization); it reloads on next use.

        Checked first: options that do not validate, or cannot work on this machine (`check_options`:
        device=cuda without a GPU, a missing quantizer), raise with the reason and leave the working
        model loaded as it was."""
        with self._lock:
            slot = self._slot(name)
            if slot.in_use:
                raise BusyError(f"Model {name!r} is generating right now; try again when it is done.")
            old = slot.generator
            options = {**old.options.model_dump(), **option_updates}
            new = type(old)(name, options, cache_dir=self.cache_dir)  # validates before anything changes
            new.check_options()
            old.unload()
            self._lru.pop(name, None)
            slot.generator = new
            return new

    def remove(self, name: str) -> None:
        with self._lock:
            slot = self._slot(name)
            if slot.in_use:
                raise BusyError(f"Model {name!r} is generating right now; try again when it is done.")
            slot.generator.unload()
            self._lru.pop(name, None)
            del self._slots[name]

    def names(self, modality: str | None = None, owner: str | None = None) -> list[str]:
        """The shared models, plus `owner`'s own (other people's own models are never listed)."""
        return [n for n, s in self._slots.items() if (modality is None or s.generator.info.modality == modality)
                and (s.owner is None or s.owner == owner)]

    def get(self, name: str) -> Generator:
        return self._slot(name).generator

    def get_visible(self, name: str, owner: str | None) -> Generator:
        """`name` as `owner` may use it: someone else's own model is refused exactly like a name that does
        not exist (the message lists the shared models and `owner`'s own), so nothing tells it is there."""
        slot = self._slots.get(name)
        if slot is None or (slot.owner is not None and slot.owner != owner):
            raise self._unknown(name, owner)
        return slot.generator

    def _unknown(self, name: str, owner: str | None) -> UnknownGeneratorError:
        known = ", ".join(self.names(owner=owner)) or "none"
        return UnknownGeneratorError(f"Unknown model {name!r}. Available models: {known}.")

    def owner_of(self, name: str) -> str | None:
        """Whose own model `name` is (None: shared)."""
        return self._slot(name).owner

    def visible(self, name: str, owner: str | None) -> bool:
        slot = self._slots.get(name)
        return slot is not None and (slot.owner is None or slot.owner == owner)

    def describe(self, owner: str | None = None) -> list[dict[str, Any]]:
        return [s.generator.describe() for s in self._slots.values() if s.owner is None or s.owner == owner]

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            known = ", ".join(n for n, s in self._slots.items() if s.owner is None) or "none"
            raise UnknownGeneratorError(f"Unknown model {name!r}. Available models: {known}.")
        return slot

    # ------------------------------------------------------------ loading
    def load(self, name: str, progress: ProgressFn | None = None) -> Generator:
        """Load a model (no-op if loaded), unloading idle LRU models to respect the budget."""
        slot = self._slot(name)
        gen = slot.generator
        if not gen.loaded:
            self._make_room(name, gen.estimated_memory_bytes())
            (progress or (lambda m: None))(f"Loading {name}…")
            log.info("Loading model %s", name)
            try:
                gen.load(progress)
            except StudioError:
                raise
            except Exception as exc:  # torch/transformers raise many types; translate once here
                log.exception("Loading %s failed", name)
                raise LoadFailedError(f"Model {name!r} failed to load: {exc}") from exc
        with self._lock:
            self._lru[name] = None
            self._lru.move_to_end(name)
        return gen

    def unload(self, name: str) -> None:
        slot = self._slot(name)
        with self._lock:
            if slot.in_use:
                raise BusyError(f"Model {name!r} is generating right now; stop it first or wait.")
            self._lru.pop(name, None)
        slot.generator.unload()

    def _make_room(self, name: str, needed: int) -> None:
        budget = self.memory_budget_bytes
        if not budget:
            return
        with self._lock:
            for other in list(self._lru):
                used = sum(self._slots[n].generator.memory_bytes() for n in self._lru)
                if used + needed <= budget:
                    return
                slot = self._slots[other]
                if other == name or slot.in_use:
                    continue
                log.info("Unloading %s (least recently used) to stay within the memory budget", other)
                self._lru.pop(other, None)
                slot.generator.unload()

    @contextmanager
    def use(self, name: str, progress: ProgressFn | None = None, owner: str = "") -> Iterator[Generator]:
        """Hold a model for one generation: loaded, not evictable, within its concurrency. Waiting
        requests get the model round-robin across `owner`s (fair share), in order within one owner."""
        slot = self._slot(name)
        if slot.owner is not None and slot.owner != owner:  # someone's own model: as if it did not exist
            raise self._unknown(name, owner)
        with self._lock:
            slot.in_use += 1
        try:
            if not slot.semaphore.acquire(owner, timeout=self.acquire_timeout_s):
                raise BusyError(f"Model {name!r} is busy with other requests; try again in a moment.")
            try:
                yield self.load(name, progress)
            finally:
                slot.semaphore.release()
        finally:
            with self._lock:
                slot.in_use -= 1
