"""Fair share of a model's slots across the people waiting for it.

A model runs at most `capacity` generations at once. Requests that must wait are queued per owner
and served round-robin across owners: when a slot frees, the owner who was served least recently
goes next, and within one owner requests keep their order. So one person's five long requests take
turns with another person's one, instead of all running before it (as a plain FIFO semaphore does).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class FairSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._cv = threading.Condition()
        self._waiting: dict[str, deque[object]] = {}
        self._served: OrderedDict[str, int] = OrderedDict()  # owner -> when last served (a counter)
        self._count = 0

    def acquire(self, owner: str = "", timeout: float | None = None) -> bool:
        """Wait for a slot in `owner`'s turn; False after `timeout` seconds without one."""
        ticket = object()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._waiting.setdefault(owner, deque()).append(ticket)
            while not (self.in_use < self.capacity and self._next() is ticket):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._drop(owner, ticket)
                    self._cv.notify_all()  # the next in line may go now
                    return False
                self._cv.wait(remaining)
            self._drop(owner, ticket)
            self._count += 1
            self._served[owner] = self._count  # served: to the back of the round
            self._served.move_to_end(owner)
            while len(self._served) > 10_000:
                self._served.popitem(last=False)
            self.in_use += 1
            self._cv.notify_all()  # a free slot may remain for the next owner
            return True

    def release(self) -> None:
        with self._cv:
            self.in_use -= 1
            self._cv.notify_all()

    def waiting(self) -> dict[str, int]:
        with self._cv:
            return {owner: len(q) for owner, q in self._waiting.items()}

    def _next(self) -> object | None:
        """The first request of the waiting owner served least recently (never served: first)."""
        if not self._waiting:
            return None
        owner = min(self._waiting, key=lambda o: self._served.get(o, 0))
        return self._waiting[owner][0]

    def _drop(self, owner: str, ticket: object) -> None:
        queue = self._waiting.get(owner)
        if queue is not None:
            queue.remove(ticket)
            if not queue:
                del self._waiting[owner]
