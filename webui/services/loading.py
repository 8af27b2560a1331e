"""Load a model before a generation while saying what the load is doing.

A first reply on a fresh data folder waits for the model to load: the GGUF file converted once into
a safetensors cache, the weights read, int4 packing, the C++ decoding loop built once. That is tens of
seconds in which the page would otherwise show nothing. `wait_until_loaded` runs the registry's load
in a helper thread, one per model and shared by every request waiting for it (the load's tensor work
runs in its own short-lived thread anyway, see generators.compute), and yields about twice a second
the stage the plugin last reported and the time spent, so the chat and story services can show it
where the reply will appear, and the status lines can show it too (`ctx.loads.progress(model)`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import AppContext

POLL_S = 0.5
# Plugins' progress messages carry their own guesses ("about 15 s", "~20 s"); the elapsed time shown
# beside the stage is the honest figure, so the guesses are dropped from the display.
_ESTIMATE = re.compile(r"\s*\((?:about|~)\s*\d+\s*s\)|,?\s*~\d+\s*s(?=\))")


@dataclass(frozen=True)
class LoadProgress:
    model: str
    stage: str  # what the plugin said it is doing, e.g. "Converting … once into a safetensors cache…"
    elapsed_s: float

    @property
    def text(self) -> str:
        return f"{self.stage} · {self.elapsed_s:.0f} s"


def describe_stage(message: str) -> str:
    """A plugin's progress message without its own time estimate."""
    cleaned = _ESTIMATE.sub("", message or "").strip()
    return cleaned.replace("()", "").strip() or "Loading…"


class _Load:
    """One model load in a helper thread, watched by every request that waits for it."""

    def __init__(self, ctx: AppContext, model: str, done: Callable[[str], None]) -> None:
        self.model = model
        self.stage = f"Loading {model}…"
        self.started = time.monotonic()
        self.failure: BaseException | None = None
        self._ctx, self._done = ctx, done
        self.thread = threading.Thread(target=self._run, name=f"load-{model}", daemon=True)

    def _run(self) -> None:
        try:
            self._ctx.registry.load(self.model, self._report)
        except BaseException as exc:  # handed to the requests that wait for this load
            self.failure = exc
        finally:
            self._done(self.model)

    def _report(self, message: str) -> None:
        self.stage = message

    def progress(self) -> LoadProgress:
        return LoadProgress(self.model, describe_stage(self.stage), time.monotonic() - self.started)


class LoadTracker:
    """The loads in progress in this app (one per model): a second request for a model that is
    loading waits for the same load, and the status lines can say what it is doing."""

    def __init__(self) -> None:
        self._loads: dict[str, _Load] = {}
        self._lock = threading.Lock()

    def progress(self, model: str) -> LoadProgress | None:
        with self._lock:
            load = self._loads.get(model)
        return load.progress() if load is not None else None

    def start(self, ctx: AppContext, model: str) -> _Load:
        with self._lock:
            load = self._loads.get(model)
            if load is None:
                load = self._loads[model] = _Load(ctx, model, self._finished)
                load.thread.start()
            return load

    def _finished(self, model: str) -> None:
        with self._lock:
            self._loads.pop(model, None)


def wait_until_loaded(ctx: AppContext, model: str, poll_s: float | None = None) -> Iterator[LoadProgress]:
    """Load `model` if it is not loaded, yielding its progress every `poll_s` until it is.

    Yields nothing when the model is already loaded. A failed load raises its error here (the
    registry has already turned it into a LoadFailedError with a readable message). Closing the
    iterator early (the user pressed Stop) leaves the load running to its end, so the next request
    finds the model loaded instead of starting over."""
    if ctx.registry.get(model).loaded:
        return
    load, every = ctx.loads.start(ctx, model), poll_s or POLL_S
    yield load.progress()
    while load.thread.is_alive():
        load.thread.join(every)
        if load.thread.is_alive():
            yield load.progress()
    if load.failure is not None:
        raise load.failure
