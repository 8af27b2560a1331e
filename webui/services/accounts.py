"""Accounts: users with argon2-hashed passwords and per-user API keys, kept in a users file.

The file (JSON, written atomically, mode 0600) is read again whenever it changes on disk, so
`python launch.py users add NAME` works while the studio runs. Users given with
`--auth user:password` live in memory only (hashed at start). Auth is on as soon as there is
one user of either kind.

API keys are random 256-bit tokens (`aigc-…`), shown once when made; the file keeps only their
SHA-256 (a slow hash adds nothing for keys of that entropy).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from generators.base import StudioError
from storage import files

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
KEY_PREFIX = "aigc-"
FORMAT = "aigc-studio.users.v1"


class AccountError(StudioError):
    code = "invalid_request_error"
    http_status = 400


class AuthError(StudioError):
    code = "invalid_api_key"
    http_status = 401


class NotAdminError(StudioError):
    code = "permission_denied"
    http_status = 403


ROLES = ("admin", "user")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AccountError("A user name is 1–64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit.")
    return name


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class _Snapshot:
    mtime: float | None = None
    users: dict[str, dict[str, Any]] = field(default_factory=dict)


class Accounts:
    """The users of one studio: a users file plus users given on the command line."""

    def __init__(self, path: Path, inline: list[str] | None = None) -> None:
        self.path = Path(path)
        self._hasher = PasswordHasher()
        self._lock = threading.RLock()
        self._cache = _Snapshot()
        self._inline: dict[str, str] = {}
        for pair in inline or []:
            name, sep, password = pair.partition(":")
            if not sep or not password:
                raise AccountError(f"--auth takes USER:PASSWORD; got {pair.split(':')[0]!r} without a password.")
            self._inline[check_name(name)] = self._hasher.hash(password)
            if len(password) < MIN_PASSWORD:
                log.warning("The password given for %r with --auth is shorter than %d characters.", name, MIN_PASSWORD)

    # ------------------------------------------------------------ file
    def _users(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                self._cache = _Snapshot()
                return {}
            if mtime != self._cache.mtime:
                self._check_mode()
                try:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    users = data["users"] if data.get("format") == FORMAT else None
                    if not isinstance(users, dict):
                        raise ValueError("no users table")
                except (OSError, ValueError, KeyError, AttributeError) as exc:
                    raise AccountError(f"The users file {self.path} is damaged ({exc}); fix it or restore a backup.") from None
                self._cache = _Snapshot(mtime, users)
            return self._cache.users

    def _check_mode(self) -> None:
        """A users file others may read (password hashes, key hashes) is narrowed to 0600, or refused."""
        if not files.too_open(self.path):
            return
        files.narrow(self.path)
        if files.too_open(self.path):
            raise AccountError(f"The users file {self.path} can be read by other accounts on this machine and the "
                               f"studio cannot change that (it is not the file's owner); run: chmod 600 {self.path}")
        log.warning("The users file %s was readable by other accounts; its mode is now 0600.", self.path)

    def _save(self, users: dict[str, dict[str, Any]]) -> None:
        files.private_dir(self.path.parent)
        data = json.dumps({"format": FORMAT, "users": users}, indent=2, sort_keys=True).encode("utf-8")
        files.write_private(self.path, data, durable=True)  # a fresh O_EXCL temp name: no planted link is followed
        self._cache = _Snapshot()  # re-read next time

    # ------------------------------------------------------------ queries
    @property
    def enabled(self) -> bool:
        return bool(self._inline) or bool(self._users())

    def names(self) -> list[str]:
        return sorted(set(self._users()) | set(self._inline))

    def verify_password(self, name: str, password: str) -> bool:
        """Gradio's login check. Constant work for unknown users, so names cannot be probed by timing."""
        if not isinstance(name, str) or not isinstance(password, str):
            return False
        stored = self._inline.get(name) or (self._users().get(name) or {}).get("password")
        try:
            if stored is None:
                self._hasher.hash(password)  # same cost as a real check
                return False
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def password_hash(self, name: str) -> str | None:
        """The stored hash of `name`'s password (it changes with every new password); None: no such user."""
        return self._inline.get(name) or (self._users().get(name) or {}).get("password")

    def is_admin(self, name: str) -> bool:
        """Admins configure, load and unload the shared models and run server-wide jobs. The first user
        made is one; `launch.py users role NAME admin|user` changes it. A users file from before roles
        (nobody marked) treats its oldest user as the admin; with only --auth users, the first given."""
        users = self._users()
        if name in users:
            if any(u.get("role") == "admin" for u in users.values()):
                return users[name].get("role") == "admin"
            oldest = min(users, key=lambda n: (users[n].get("created", ""), n))
            return name == oldest
        return bool(self._inline) and not users and name == next(iter(self._inline))

    def set_role(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"A role is one of {', '.join(ROLES)}; got {role!r}.")
        with self._lock:
            users = dict(self._users())
            if name not in users:
                raise AccountError(f"No user {name!r} in {self.path}.")
            if role == "user" and self.is_admin(name) and sum(self.is_admin(n) for n in users) <= 1:
                raise AccountError(f"{name} is the only admin; make another user admin first.")
            if not any(u.get("role") == "admin" for u in users.values()):  # make the implicit admin explicit
                users = {n: {**u, "role": "admin" if self.is_admin(n) else "user"} for n, u in users.items()}
            users[name] = {**users[name], "role": role}
            self._save(users)

    def user_for_key(self, key: str) -> str | None:
        if not key or not key.startswith(KEY_PREFIX):
            return None
        wanted = _key_hash(key)
        for name, user in self._users().items():
            for entry in user.get("api_keys", []):
                if hmac.compare_digest(entry.get("sha256", ""), wanted):
                    return name
        return None

    # ------------------------------------------------------------ changes (the `users` command)
    def add(self, name: str, password: str) -> str:
        """Add a user; returns their first API key (shown once)."""
        check_name(name)
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"Use a password of at least {MIN_PASSWORD} characters.")
        with self._lock:
            users = dict(self._users())
            if name in users:
                raise AccountError(f"User {name!r} already exists; remove it first or pick another name.")
            role = "admin" if not users else "user"  # the first user administers the studio
            users[name] = {"password": self._hasher.hash(password), "api_keys": [], "created": _now(), "role": role}
            key = self._add_key(users[name])
            self._save(users)
            return key

    def set_password(self, name: str, password: str) -> None:
        """A new password ends the user's logins (their sessions see a new hash) and revokes their API keys."""
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"Use a password of at least {MIN_PASSWORD} characters.")
        with self._lock:
            users = dict(self._users())
            if name not in users:
                raise AccountError(f"No user {name!r} in {self.path}.")
            users[name] = {**users[name], "password": self._hasher.hash(password), "api_keys": []}
            self._save(users)

    def new_key(self, name: str) -> str:
        with self._lock:
            users = dict(self._users())
            if name not in users:
                raise AccountError(f"No user {name!r} in {self.path}.")
            user = users[name] = {**users[name], "api_keys": list(users[name].get("api_keys", []))}
            key = self._add_key(user)
            self._save(users)
            return key

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._users())
            if name not in users:
                raise AccountError(f"No user {name!r} in {self.path}.")
            del users[name]
            self._save(users)

    @staticmethod
    def _add_key(user: dict[str, Any]) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        user.setdefault("api_keys", []).append({"sha256": _key_hash(key), "created": _now()})
        return key


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
