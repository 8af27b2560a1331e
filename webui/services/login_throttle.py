"""Failed logins slow down the next try, per address and per account, with a growing delay.

A few mistakes are free; after that each failure doubles the wait before the next try is even checked
(1 s, 2 s, 4 s … up to a cap). A try made while waiting is refused without hashing the password
(the refusal itself is answered after a short pause, so a flooding client slows to a few requests a
second per connection), and a flood of wrong passwords costs the server almost nothing. The address limit stops one
machine guessing many accounts; the account limit (lower cap, so an attacker cannot lock a person out
for long) stops many machines guessing one account. A success clears the account's count only (an
attacker who owns an account must not reset their address by logging in to it between guesses).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 50_000  # addresses + accounts remembered; the least recently failed are forgotten first
FORGET_AFTER_S = 3600.0  # a key with no failure for this long starts afresh


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    until: float = 0.0  # no try is checked before this time


class LoginRefused(Exception):
    """A login try refused before its password was checked; `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LoginThrottle:
    def __init__(self, *, free_failures: int = 3, first_delay_s: float = 1.0, address_max_s: float = 900.0,
                 account_max_s: float = 60.0, tarpit_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free_failures = free_failures
        self.first_delay_s = first_delay_s
        self.caps = {"address": address_max_s, "account": account_max_s}
        # a refusal is answered after up to this long (the web edge awaits it without holding a thread),
        # so a client that keeps hammering sends a few requests a second instead of hundreds
        self.tarpit_s = tarpit_s
        self._clock = clock
        self._failures: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str, account: str) -> None:
        """Raise LoginRefused while `address` or `account` must still wait after earlier failures."""
        now = self._clock()
        with self._lock:
            waits = {kind: f.until - now for kind, key in (("address", address), ("account", account))
                     if (f := self._failures.get((kind, key))) is not None and f.until > now}
        if not waits:
            return
        kind = max(waits, key=waits.__getitem__)
        seconds = max(1, math.ceil(waits[kind]))
        who = "from your address" if kind == "address" else "for this account"
        raise LoginRefused(f"Too many failed logins {who}; wait {seconds} s before trying again "
                           "(each further failure doubles the wait).", seconds)

    def failed(self, address: str, account: str) -> None:
        now = self._clock()
        with self._lock:
            for kind, key in (("address", address), ("account", account)):
                f = self._failures.pop((kind, key), None) or _Failures()
                if now - f.last > FORGET_AFTER_S:
                    f = _Failures()
                f.count += 1
                f.last = now
                over = f.count - self.free_failures
                if over > 0:
                    f.until = now + min(self.caps[kind], self.first_delay_s * 2 ** min(over - 1, 30))
                self._failures[(kind, key)] = f  # most recently failed last
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, account: str) -> None:
        with self._lock:
            self._failures.pop(("account", account), None)
