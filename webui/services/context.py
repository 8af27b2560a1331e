"""AppContext: the objects launch.py builds once and passes down (no module-level state)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from generators.registry import Registry
from storage import Store
from storage.models import LOCAL_OWNER

from ..settings import Settings
from .story_context import TokenCountCache


class CancelTokens:
    """One cancel event per browser session (or API request), so Stop stops only its owner."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def fresh(self, key: str) -> threading.Event:
        """A new, unset event for the next generation of `key`."""
        with self._lock:
            event = self._events[key] = threading.Event()
            return event

    def current(self, key: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())

    def cancel(self, key: str) -> bool:
        with self._lock:
            event = self._events.get(key)
        if event is None:
            return False
        event.set()
        return True

    def discard(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


@dataclass
class AppContext:
    settings: Settings
    registry: Registry
    store: Store
    cancels: CancelTokens = field(default_factory=CancelTokens)
    token_counts: TokenCountCache = field(default_factory=TokenCountCache)  # story context, per model
    default_owner: str = LOCAL_OWNER

    def owner_for(self, username: str | None) -> str:
        """The owner of a request: the logged-in user, or the local user while auth is off."""
        return username or self.default_owner

    @property
    def default_model(self) -> str:
        return self.settings.default_model_name()
