"""The compute lane: one thread runs the tensor work of the process.

Why one thread. PyTorch on a CPU splits each operator over an OpenMP (libgomp) team, and every OS
thread that runs a parallel region gets a team of its own, kept until that thread exits. A web
server answers requests on a pool of threads, so left alone every request thread grows a team; once
the process holds more OpenMP threads than CPUs, libgomp cuts its spin-wait to ~100 iterations and
each of the hundreds of small parallel regions of a decoding step pays a futex wake-up, which makes
small kernels and whole decoding steps several times slower (`benchmarks/bench_threads.py` prints both
sides). With all tensor work on one thread there is one team, and decoding runs as fast as in a
script's main thread.

So plugins run their tensor work here:
- `call(fn, ...)` (or a method decorated with `@on_lane`) runs one job and returns its result
  (or raises its exception) in the caller;
- `iterate(gen)` advances a generator one time slice (10 ms) per job, so a streaming plugin (the
  char LSTM) interleaves with everything else instead of holding the lane for a whole reply;
- a stepper (the continuous batcher) is ticked between jobs while it has work: one decoding step
  of the whole batch per tick;
- `in_fresh_thread(fn, ...)` is for the long, rare jobs (loading a model) that should
  not stall every stream: a short-lived thread whose OpenMP team goes away when it exits.

The lane is per process, like torch's own thread pool it exists to protect (a second lane would be a
second team): `lane()` creates it on first use. Jobs run in the order they arrive, one at a time, and
the lane alternates one job with one tick of every busy stepper. A job must not wait for the lane
itself (a job that streams from the batcher would wait forever): `call` from the lane runs inline,
and the batcher refuses to be read from the lane.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class Stepper(Protocol):
    """Work the lane advances in small steps while `has_work()` (the continuous batcher)."""

    def has_work(self) -> bool: ...

    def tick(self) -> None: ...


class ComputeLane:
    def __init__(self, name: str = "compute-lane") -> None:
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Future[Any]]] = deque()
        self._steppers: list[Stepper] = []
        self._own_threads: int | None = None  # torch threads before share_cpus lowered them
        self._cv = threading.Condition()
        self.jobs_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def on_lane(self) -> bool:
        return threading.current_thread() is self._thread

    # ------------------------------------------------------------ jobs
    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue `fn` for the lane; it runs in a copy of the caller's context (context variables such as
        a web request's progress tracker stay visible, as with `asyncio.to_thread`)."""
        future: Future[T] = Future()
        context = contextvars.copy_context()
        with self._cv:
            self._jobs.append((context.run, (fn, *args), kwargs, future))
            self._cv.notify()
        return future

    def share_cpus(self, busy: int) -> Future[int]:
        """Leave `busy` CPUs to other processes of the app (training jobs): the lane's torch threads become
        its own count minus `busy` (at least one), and all of them again at 0. Two OpenMP teams that share
        cores each wait for the other's descheduled threads at every parallel region, so chat slows far more
        than the cores it lost (`benchmarks/bench_lora.py --chat-latency` prints both). Resolves to the
        lane's new thread count."""

        def apply() -> int:
            import torch

            if self._own_threads is None:
                self._own_threads = torch.get_num_threads()
            torch.set_num_threads(max(1, self._own_threads - busy))
            if busy == 0:
                self._own_threads = None
            return torch.get_num_threads()

        return self.submit(apply)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn` on the lane and return what it returns (its exception is raised here)."""
        if self.on_lane():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def iterate(self, items: Iterable[T], slice_s: float = 0.01) -> Iterator[T]:
        """Yield the items of `items`, produced on the lane; closing this closes it on the lane.

        One job produces items for up to `slice_s` seconds (at least one item), so a fast stream — the
        char LSTM makes a character in well under a millisecond — is not held to one item per batch
        step of a busy language model, and a decoding step waits at most one slice for it."""
        it = iter(items)

        def pull() -> tuple[list[T], bool]:
            out: list[T] = []
            deadline = time.perf_counter() + slice_s
            while True:
                item = next(it, _END)
                if item is _END:
                    return out, True
                out.append(item)
                if time.perf_counter() >= deadline:
                    return out, False

        try:
            while True:
                produced, done = self.call(pull)
                yield from produced
                if done:
                    return
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                self.call(close)

    # ------------------------------------------------------------ steppers
    def add_stepper(self, stepper: Stepper) -> None:
        with self._cv:
            self._steppers.append(stepper)
            self._cv.notify()

    def remove_stepper(self, stepper: Stepper) -> None:
        with self._cv:
            if stepper in self._steppers:
                self._steppers.remove(stepper)

    def wake(self) -> None:
        """A stepper has new work (call after making `has_work()` true)."""
        with self._cv:
            self._cv.notify()

    # ------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._busy_steppers():
                    self._cv.wait()
                job = self._jobs.popleft() if self._jobs else None
                steppers = self._busy_steppers()
            if job is not None:
                fn, args, kwargs, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args, **kwargs))
                    except BaseException as exc:  # noqa: BLE001 - the caller gets it
                        future.set_exception(exc)
                self.jobs_run += 1
                del job, future  # drop references (a big result) before waiting again
            for stepper in steppers:
                try:
                    stepper.tick()
                except BaseException:  # noqa: BLE001 - a stepper handles its own errors; never lose the lane
                    log.exception("A compute-lane stepper failed")

    def _busy_steppers(self) -> list[Stepper]:
        busy = []
        for stepper in self._steppers:
            try:
                if stepper.has_work():
                    busy.append(stepper)
            except Exception:  # noqa: BLE001
                log.exception("A compute-lane stepper failed to report its work")
        return busy


_lock = threading.Lock()
_lane: ComputeLane | None = None


def lane() -> ComputeLane:
    """The process's compute lane (created on first use)."""
    global _lane
    with _lock:
        if _lane is None:
            _lane = ComputeLane()
        return _lane


def in_fresh_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` in a new thread that exits afterwards (taking its OpenMP team with it), wait for it,
    return its result or raise its exception. For long, rare jobs such as loading a model."""
    result: list[Any] = []
    error: list[BaseException] = []
    context = contextvars.copy_context()  # the caller's context variables (a request's progress tracker) come along

    def run() -> None:
        try:
            result.append(context.run(fn, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="compute-oneoff", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def on_lane(method: Callable[..., T]) -> Callable[..., T]:
    """Decorator: the function always runs on the compute lane (the caller waits for it)."""

    @functools.wraps(method)
    def run_on_lane(*args: Any, **kwargs: Any) -> T:
        return lane().call(method, *args, **kwargs)

    return run_on_lane
