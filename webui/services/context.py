"""AppContext: the objects launch.py builds once and passes down (no module-level state).

The services read the configuration only through `ServiceConfig`, the values the web layer hands
them (`Settings.service_config()`): nothing here imports the web layer above."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generators.base import BusyError, InvalidOptionsError
from generators.compute import lane
from generators.registry import Registry
from storage import Store
from storage.models import LOCAL_OWNER

from .accounts import Accounts, AuthError, NotAdminError
from .jobs import JobRunner
from .loading import LoadTracker
from .login_throttle import LoginThrottle
from .provenance import ImageSigner
from .sessions import SessionBook
from .story_context import TokenCountCache


class CancelTokens:
    """One cancel event per browser session (or API request), so Stop stops only its owner.

    Keys are a browser session's id, or `purpose:id` where one page has several Stop buttons (`paint:`,
    `metrics:` …). When the browser session ends, `discard_session` drops all of its events, so they do
    not pile up for the life of the server."""

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

    def discard_session(self, session: str) -> int:
        """Forget every event of a browser session (its own key and its `purpose:session` keys); how many.
        A generation still running keeps its event and stops as before; only the entries go."""
        if not session:
            return 0
        suffix = ":" + session
        with self._lock:
            keys = [k for k in self._events if k == session or k.endswith(suffix)]
            for key in keys:
                del self._events[key]
        return len(keys)

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


def check_text(text: Any, what: str = "text", limit: int | None = None,
               error: type[InvalidOptionsError] = InvalidOptionsError) -> None:
    """Text a person typed (or a file they uploaded holds) must be a string, within the limit, and storable in
    any database; `error` is the refusal's class (e.g. a card import's)."""
    if not isinstance(text, str):
        raise error(f"The {what} must be text, not {type(text).__name__}.")
    if limit is not None and len(text) > limit:
        raise error(f"The {what} is {len(text):,} characters long; the limit is {limit:,}.")
    if "\x00" in text:
        raise error(f"The {what} contains a NUL character (\\x00); remove it and try again.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"The {what} contains characters that are not valid Unicode (a lone surrogate, "
                    "e.g. from text decoded with errors='surrogateescape'); fix the encoding.") from None


TITLE_LIMIT = 200


def clean_title(value: Any, what: str = "title") -> str:
    """A title or name: text (None counts as empty), valid Unicode, stripped, at most 200 characters."""
    value = "" if value is None else value
    check_text(value, what)
    return value.strip()[:TITLE_LIMIT]


DEFAULT_REQUESTS_PER_MINUTE = 60  # with accounts, when the settings leave it unset


class RateLimiter:
    """At most `per_minute` generation requests per owner in any 60-second window (0 = no limit)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, owner: str, consume: bool = True) -> None:
        """Raise BusyError when `owner` is over the limit; count this request when `consume`."""
        if self.per_minute <= 0:
            return
        now = self._clock()
        with self._lock:
            hits = self._hits[owner]
            while hits and now - hits[0] >= 60:
                hits.popleft()
            if len(hits) >= self.per_minute:
                wait = 60 - (now - hits[0])
                raise BusyError(f"You have sent {len(hits)} requests in the last minute (the limit is "
                                f"{self.per_minute}); try again in {max(1, round(wait))} s.", retry_after_s=wait)
            if consume:
                hits.append(now)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """What the services need to know of the studio's configuration: limits on requests, who may log
    in, and the default model. Made by the web layer from its settings; defaults as the settings'."""

    max_prompt_chars: int = 50_000  # characters of a message, passage or API prompt
    max_new_tokens: int = 2048  # the largest max_new_tokens a request may ask for
    max_image_batch: int = 64  # images per request
    max_interpolation_frames: int = 32  # frames of a latent walk or a denoising trajectory
    max_image_side: int = 2048  # largest width or height of a prompted image (px)
    requests_per_minute: int | None = None  # per user; 0: no limit; None: DEFAULT_REQUESTS_PER_MINUTE with accounts
    users_path: Path  # users with hashed passwords and API keys (a file that may not exist yet)
    auth: tuple[str, ...] = ()  # USER:PASSWORD pairs kept in memory
    default_model: str = ""  # the model a chat or story uses unless one is picked
    sign_images: bool = True  # embed a signed C2PA manifest in every image written
    signing_cert: Path | None = None  # the operator's PEM certificate chain (None: the studio's own identity)
    signing_key: Path | None = None
    signing_alg: str = "es256"
    train_jobs: int = 1  # training jobs that run at once
    train_threads: int = 1  # torch CPU threads of a training job
    max_upload_mb: float = 64.0  # largest upload (multipart)
    max_dataset_mb: float = 64.0  # largest training dataset


@dataclass
class AppContext:
    registry: Registry
    store: Store
    config: ServiceConfig = None  # type: ignore[assignment]  # None: made from `settings`
    # The web layer's own settings, carried for the tabs and the server (the services read `config`).
    # Given alone, it must offer `service_config()`.
    settings: Any = None
    cancels: CancelTokens = field(default_factory=CancelTokens)
    token_counts: TokenCountCache = field(default_factory=TokenCountCache)  # story context, per model
    loads: LoadTracker = field(default_factory=LoadTracker)  # models loading now, with their stage
    default_owner: str = LOCAL_OWNER
    accounts: Accounts | None = None
    rate: RateLimiter | None = None
    logins: LoginThrottle = field(default_factory=LoginThrottle)  # failed logins slow the next try
    # called with a file about to be deleted, so every cache the server serves from drops its copies
    served_copies: list[Callable[[Path], None]] = field(default_factory=list)
    signer: ImageSigner | None = None  # C2PA signing of every image written (identity made on first use)
    sessions: SessionBook | None = None  # logins and running API requests, ended on revocation (auth on)
    jobs: JobRunner | None = None  # training jobs (started by the server: services.training.start_jobs)

    def __post_init__(self) -> None:
        if self.config is None:
            if self.settings is None:
                raise TypeError("AppContext needs `config` (a ServiceConfig) or web settings that make one.")
            self.config = self.settings.service_config()
        c = self.config
        if self.signer is None:
            self.signer = ImageSigner(self.store.data_dir, c.signing_cert, c.signing_key, c.signing_alg,
                                      c.sign_images)
        if self.jobs is None:
            self.jobs = JobRunner(self.store, max_running=c.train_jobs, threads=c.train_threads,
                                  on_cpus=lambda busy: lane().share_cpus(busy))
        if self.accounts is None:
            self.accounts = Accounts(c.users_path, list(c.auth))
        if self.rate is None:
            per_minute = c.requests_per_minute
            self.rate = RateLimiter(DEFAULT_REQUESTS_PER_MINUTE if per_minute is None else per_minute)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.accounts and self.accounts.enabled)

    def owner_for(self, username: str | None) -> str:
        """The owner of a request: the logged-in user, or the local user while auth is off.

        With auth on, a request without a logged-in user owns nothing: it is refused."""
        if username:
            return username
        if self.auth_enabled:
            raise AuthError("Log in first: this studio has user accounts.")
        return self.default_owner

    def owner_for_api_key(self, authorization: str | None) -> str:
        """The owner of an HTTP API request from its `Authorization: Bearer KEY` header."""
        if not self.auth_enabled:
            return self.default_owner
        scheme, _, key = (authorization or "").partition(" ")
        user = self.accounts.user_for_key(key.strip()) if scheme.lower() == "bearer" and self.accounts else None
        if user is None:
            raise AuthError("Missing or invalid API key: send `Authorization: Bearer aigc-…` "
                            "(make one with `python launch.py users key NAME`).")
        return user

    def watch_api_request(self, owner: str, cancel: threading.Event) -> Callable[[], None]:
        """Stop this API request's generations (set `cancel`) if its user is removed or changes password
        while it runs; returns the call that ends the watch."""
        if self.sessions is None:
            return lambda: None
        return self.sessions.api_request(owner, cancel)

    def is_admin(self, owner: str) -> bool:
        """With auth off the one local user runs the studio; with auth on, the accounts decide."""
        return not self.auth_enabled or bool(self.accounts and self.accounts.is_admin(owner))

    def require_admin(self, owner: str, what: str = "change the shared models") -> None:
        """Model configuration, loading and unloading and server-wide settings affect every user."""
        if not self.is_admin(owner):
            raise NotAdminError(f"Only an admin can {what}; ask one (or run: python launch.py users role "
                                f"{owner} admin on the server).")

    # ------------------------------------------------------------ limits, checked by the services
    def check_rate(self, owner: str, consume: bool = True) -> None:
        """The per-user request limit. Unset, it applies only with accounts: one local user with auth off
        scripting against their own studio is never throttled."""
        if self.config.requests_per_minute is None and not self.auth_enabled:
            return
        if self.rate:
            self.rate.check(owner, consume)

    def check_text(self, text: str, what: str = "text") -> None:
        check_text(text, what, self.config.max_prompt_chars)

    def check_max_new_tokens(self, value: int) -> None:
        limit = self.config.max_new_tokens
        if value > limit:
            raise InvalidOptionsError(f"max_new_tokens is {value:,}; this studio allows at most {limit:,}.")

    @property
    def default_model(self) -> str:
        return self.config.default_model
