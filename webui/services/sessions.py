"""Logins and the browser sessions they own.

A login (a cookie token) is valid while its user exists with the password they logged in with:
removing the user or changing the password ends it at the next request, or within a second by the
sweep, and the generations its browser sessions are running are cancelled. A browser session id
(Gradio's `session_hash`, seen in URLs) belongs to the login that used it first; another login that
sends it — to press Stop, read a deep link or reach per-session state — is refused.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from .accounts import Accounts

SESSIONS_PER_USER = 1000  # remembered per user; a user's oldest are forgotten first (never another's)
STAMP_INLINE = "inline"


def session_stamp(accounts: Accounts, user: str) -> str | None:
    """What a login of `user` depends on: their password hash (a new salt on every change); None
    when the user no longer exists."""
    stored = accounts.password_hash(user)
    if stored is None:
        return None
    return hashlib.sha256(stored.encode()).hexdigest()[:32]


@dataclass
class _Login:
    user: str
    stamp: str


class SessionBook:
    def __init__(self, accounts: Accounts, cancel: Callable[[str], object]) -> None:
        self.accounts = accounts
        self._cancel = cancel  # ends a session's running generation (AppContext.cancels.cancel)
        self._logins: dict[str, _Login] = {}
        self._owners: dict[str, tuple[str, str]] = {}  # session id -> (user, token)
        self._by_user: dict[str, OrderedDict[str, None]] = {}
        self._api: dict[int, tuple[str, str | None, threading.Event]] = {}  # running API requests
        self._lock = threading.Lock()
        self.gradio_tokens: MutableMapping[str, str] | None = None  # the web server's token table, once it runs

    # ------------------------------------------------------------ logins
    def logged_in(self, token: str, user: str) -> None:
        stamp = session_stamp(self.accounts, user)
        if stamp is not None:
            with self._lock:
                self._logins[token] = _Login(user, stamp)

    def valid(self, token: str, user: str) -> bool:
        """Whether the login `token` of `user` still stands (else it is forgotten: the caller drops it)."""
        with self._lock:
            login = self._logins.get(token)
        if login is not None and login.user == user and session_stamp(self.accounts, user) == login.stamp:
            return True
        self._end(token)
        return False

    def sweep(self, tokens: MutableMapping[str, str] | None = None) -> list[str]:
        """End every login whose user was removed or changed password, and stop the API requests their
        keys are still running; returns the users affected. `tokens` is the web server's own token table,
        from which ended logins are removed too."""
        with self._lock:
            logins = list(self._logins.items())
            running = list(self._api.items())
        ended = []
        stamps: dict[str, str | None] = {}

        def stamp(user: str) -> str | None:
            if user not in stamps:
                stamps[user] = session_stamp(self.accounts, user)
            return stamps[user]

        for token, login in logins:
            if stamp(login.user) != login.stamp:
                self._end(token)
                if tokens is not None:
                    tokens.pop(token, None)
                ended.append(login.user)
        for key, (user, started, cancel) in running:
            if stamp(user) != started:  # the key's user was removed or changed password (keys revoked)
                cancel.set()
                with self._lock:
                    self._api.pop(key, None)
                ended.append(user)
        return sorted(set(ended))

    # ------------------------------------------------------------ API requests
    def api_request(self, user: str, cancel: threading.Event) -> Callable[[], None]:
        """Watch a running API request of `user` (its generations stop on `cancel`): when the user is
        removed or changes password, the sweep sets it. Returns the call that ends the watch."""
        key = id(cancel)
        with self._lock:
            self._api[key] = (user, session_stamp(self.accounts, user), cancel)

        def done() -> None:
            with self._lock:
                self._api.pop(key, None)

        return done

    def _end(self, token: str) -> None:
        with self._lock:
            self._logins.pop(token, None)
            sessions = [sid for sid, (_user, t) in self._owners.items() if t == token]
        for sid in sessions:  # stop what the ended login is running
            self._cancel(sid)
            self._cancel("metrics:" + sid)

    # ------------------------------------------------------------ browser sessions
    def claim(self, session_id: str, user: str, token: str) -> bool:
        """Bind `session_id` to `user` if nobody holds it; True when `user` owns it."""
        with self._lock:
            owner = self._owners.get(session_id)
            if owner is not None:
                if owner[0] != user:
                    return False
                if owner[1] != token:  # the same user, a newer login (e.g. after a password change)
                    self._owners[session_id] = (user, token)
                self._by_user[user].move_to_end(session_id)
                return True
            self._owners[session_id] = (user, token)
            mine = self._by_user.setdefault(user, OrderedDict())
            mine[session_id] = None
            while len(mine) > SESSIONS_PER_USER:
                old, _ = mine.popitem(last=False)
                self._owners.pop(old, None)
            return True

    def owner_of(self, session_id: str) -> str | None:
        with self._lock:
            owner = self._owners.get(session_id)
        return owner[0] if owner else None
