"""The request guard: one ASGI middleware in front of every route (the page, Gradio's API, the HTTP API,
and any route added later), so no route can forget a check.

- Bodies: at most `max_body_mb` (uploads: `max_upload_mb`) → 413; JSON nested deeper than
  `max_json_depth` → 400 before any parser recurses into it. Both in the API's error shape.
- Logins (`POST /login`): refused at once while the address or account must wait after failures
  (429 + Retry-After, no password hashed); the outcome feeds the throttle; a login's token is recorded
  so removing the user or changing the password ends it.
- Sessions: a request whose login was ended is treated as logged out; a Gradio session id (query,
  path or JSON body) belongs to the first login that used it, and any other login sending it gets 403.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from .protocol import error_body
from .services.login_throttle import LoginRefused, LoginThrottle
from .services.sessions import SessionBook

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SESSION_IN_PATH = re.compile(r"/(?:heartbeat|stream)/([^/]+)")
LOGIN_PATHS = {"/login", "/login/"}


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than `limit`, found without recursion or parsing
    (brackets inside strings do not count)."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return ""


def client_address(scope: Scope) -> str:
    """The caller's address. Behind the share tunnel every request comes from this machine; then the
    address the tunnel appended to X-Forwarded-For (the right-most) is the caller's."""
    peer = (scope.get("client") or ("", 0))[0] or "unknown"
    forwarded = _header(scope, b"x-forwarded-for")
    if forwarded and (peer.startswith("127.") or peer == "::1"):
        return forwarded.split(",")[-1].strip() or peer
    return peer


async def send_error(send: Send, status: int, message: str, type_: str, code: str,
                     headers: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = json.dumps({**error_body(message, type_, code), "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware; made by Starlette with the settings, the accounts' session book and the throttle."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, max_body_bytes: int, max_upload_bytes: int,
                 max_json_depth: int, sessions: SessionBook | None, throttle: LoginThrottle | None,
                 login_script: str = "") -> None:
        self.app = app
        # added to the page's HTML while auth is on: the login page is served before Gradio sends any
        # configuration (its `head` included), so this is the one way to make it show a 429's message
        self.login_script = login_script.encode()
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.max_json_depth = max_json_depth
        self.sessions = sessions  # None: auth is off, nothing to bind
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        login = self.sessions is not None and scope.get("method") == "POST" and path in LOGIN_PATHS
        try:
            # a login form is read whole whatever its encoding (the browser's login page sends multipart)
            body, receive = await self._body(scope, receive, whole=login)
        except BodyError as exc:
            await send_error(send, exc.status, str(exc), "invalid_request_error",
                             "request_too_large" if exc.status == 413 else "invalid_json")
            return
        if login:
            await self._login(scope, receive, send, body or b"")
            return
        if self.sessions is not None:
            refusal = self._session_refusal(scope, path, body)
            if refusal is not None:
                await send_error(send, refusal[0], refusal[1], "permission_error", "session_not_yours")
                return
            if scope.get("method") == "GET" and path in ("", "/") and self.login_script:
                await self.app(scope, receive, _with_script(send, self.login_script))
                return
        await self.app(scope, receive, send)

    # ------------------------------------------------------------ bodies
    async def _body(self, scope: Scope, receive: Receive, *, whole: bool = False) -> tuple[bytes | None, Receive]:
        """Read a JSON or form body whole (within the limit) and check its depth; stream an upload
        through while counting (unless `whole`). Returns the body (None when streamed) and the receive to pass on."""
        if scope.get("method") not in BODY_METHODS:
            return None, receive
        ctype = _header(scope, b"content-type").lower()
        upload = ctype.startswith("multipart/") and not whole
        limit = self.max_upload_bytes if upload else self.max_body_bytes
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > limit:
            raise BodyError(413, _too_large(int(length), limit, upload))
        if upload:
            return None, _counting(receive, limit)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyError(413, _too_large(size, limit, upload))
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if ("json" in ctype or body[:1] in (b"{", b"[")) and json_depth_exceeds(body, self.max_json_depth):
            raise BodyError(400, f"The JSON body nests more than {self.max_json_depth} levels deep; "
                                 "flatten it (no request of this studio needs that many).")
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        return body, replay

    # ------------------------------------------------------------ logins
    async def _login(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        assert self.sessions is not None and self.throttle is not None
        account = await _form_username(scope, body)
        address = client_address(scope)
        try:
            self.throttle.check(address, account)
        except LoginRefused as exc:
            await asyncio.sleep(min(exc.retry_after_s, self.throttle.tarpit_s))
            await send_error(send, 429, str(exc), "rate_limit_error", "too_many_failed_logins",
                             [(b"retry-after", str(exc.retry_after_s).encode())])
            return
        status = 0
        token = ""

        async def watch(message: Message) -> None:
            nonlocal status, token
            if message["type"] == "http.response.start":
                status = message["status"]
                for key, value in message.get("headers") or ():
                    if key == b"set-cookie" and value.startswith(b"access-token-"):
                        cookie = SimpleCookie(value.decode("latin-1"))
                        token = next(iter(cookie.values())).value if cookie else token
            await send(message)

        await self.app(scope, receive, watch)
        if status == 200 and token:
            # the user is whom the server logged in (its token table), not what the form was parsed as
            user = getattr(scope.get("app"), "tokens", {}).get(token) or account
            self.throttle.succeeded(user)
            self.sessions.logged_in(token, user)
        elif status == 400:
            self.throttle.failed(address, account)
            log.info("Failed login for %r from %s", account[:64], address)

    # ------------------------------------------------------------ sessions
    def _session_refusal(self, scope: Scope, path: str, body: bytes | None) -> tuple[int, str] | None:
        assert self.sessions is not None
        app = scope.get("app")
        tokens: MutableMapping[str, str] = getattr(app, "tokens", {})
        token = _login_token(scope, getattr(app, "cookie_id", ""))
        user = tokens.get(token) if token else None
        if user is not None and not self.sessions.valid(token, user):
            tokens.pop(token, None)  # the user was removed or changed password: this login is over
            user = None
        session_ids = _session_ids(scope, path, body)
        if not session_ids:
            return None
        if user is None:
            return 401, "Log in first: this browser session needs a login."
        for sid in session_ids:
            if not self.sessions.claim(sid, user, token):
                log.warning("Refused %s %s: session %s… belongs to another login (request by %r)",
                            scope.get("method"), path, sid[:6], user)
                return 403, "This browser session belongs to another login; reload the page to start your own."
        return None


async def _form_username(scope: Scope, body: bytes) -> str:
    """The `username` field of a login form, URL-encoded or multipart ("" when there is none)."""
    from starlette.requests import Request  # the server's own form parser (python-multipart)

    async def once() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    request = Request({**scope, "type": "http"}, once)
    try:
        async with request.form(max_files=0, max_fields=16) as form:
            value = form.get("username")
    except Exception:  # noqa: BLE001 - a malformed form names no account; the server refuses it itself
        return ""
    return value.strip()[:256] if isinstance(value, str) else ""


def _login_token(scope: Scope, cookie_id: str) -> str:
    raw = _header(scope, b"cookie")
    if not raw or not cookie_id:
        return ""
    cookie = SimpleCookie()
    try:
        cookie.load(raw)
    except Exception:  # noqa: BLE001 - a malformed cookie header is simply no login
        return ""
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        if name in cookie:
            return cookie[name].value
    return ""


def _session_ids(scope: Scope, path: str, body: bytes | None) -> set[str]:
    found: set[str] = set()
    query = scope.get("query_string") or b""
    if b"session_hash" in query:
        found.update(v for v in parse_qs(query.decode("latin-1")).get("session_hash", []) if v)
    match = SESSION_IN_PATH.search(path)
    if match and "/gradio_api/" in path:
        found.add(match.group(1))
    if body and b"session_hash" in body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("session_hash"), str) and data["session_hash"]:
            found.add(data["session_hash"])
    return found


def _with_script(send: Send, script: bytes) -> Send:
    """Pass an HTML page through with `script` added before its </head> (and its length fixed)."""
    start: Message | None = None
    chunks: list[bytes] = []

    async def rewriting(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or ())
            if b"text/html" not in headers.get(b"content-type", b""):
                start = None
                await send(message)
                return
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        html = b"".join(chunks).replace(b"</head>", script + b"</head>", 1)
        headers = [(k, v) for k, v in start.get("headers") or () if k != b"content-length"]
        headers.append((b"content-length", str(len(html)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": html, "more_body": False})

    return rewriting


def _too_large(size: int, limit: int, upload: bool) -> str:
    what = "upload" if upload else "request body"
    return (f"The {what} is {size / 2**20:.1f} MB; this studio accepts at most {limit / 2**20:.1f} MB "
            f"({'max_upload_mb' if upload else 'max_body_mb'} in the settings).")


def _counting(receive: Receive, limit: int) -> Receive:
    """Pass an upload through, ending it (as a disconnect) once it passes `limit` bytes."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                log.warning("An upload passed %d bytes without a Content-Length; it was cut off", limit)
                return {"type": "http.disconnect"}
        return message

    return counted
