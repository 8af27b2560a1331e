"""Wire settings → registry + store → Gradio app + HTTP API, and serve them on one port."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import gradio as gr
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware

from generators.base import StudioError
from generators.registry import ModelSpec, Registry
from storage import Store

from .api import EXCEPTION_HANDLERS, build_router
from .app import CSS, JS, LOGIN_SCRIPT, build_app
from .cache import ServedFiles
from .guard import RequestGuard
from .services.accounts import Accounts
from .services.context import AppContext
from .services.sessions import SessionBook
from .services.training import start_jobs
from .settings import Settings

log = logging.getLogger(__name__)


def create_context(settings: Settings) -> AppContext:
    """Build the long-lived objects of one app instance."""
    data_dir = settings.data_dir.resolve()
    store = Store(settings.database_url, data_dir)
    recovered = store.recover_interrupted()
    if recovered:
        log.warning("%d reply/replies were cut off by the last shutdown; they are kept and marked interrupted", recovered)
    budget = int(settings.memory_budget_gb * 2**30) if settings.memory_budget_gb else None
    registry = Registry.discover(
        memory_budget_bytes=budget,
        cache_dir=str(settings.model_cache_dir or data_dir / "models"),
        concurrency=settings.concurrency,
        acquire_timeout_s=settings.busy_timeout_s,
    )
    for m in settings.model_list():
        try:
            registry.add(ModelSpec(m.name, m.plugin, dict(m.options), m.concurrency))
        except StudioError as exc:  # one misconfigured model must not keep the others from serving
            log.error("Model %r is not available: %s", m.name, exc)
    ctx = AppContext(registry=registry, store=store, config=settings.service_config(), settings=settings)
    start_jobs(ctx)  # the owners' trained models join the registry; queued jobs start
    if not settings.sign_images:
        log.warning("sign_images is off: images are written without content credentials")
        return ctx
    identity = ctx.signer.identity  # made at first start; a broken operator certificate stops the start here
    ctx.signer.check()
    log.info("Images are signed (C2PA) as %r, %s, %s key, certificate sha256 %s…", identity.subject,
             identity.alg.upper(), identity.source, identity.fingerprint[:16])
    return ctx


def password_check(accounts: Accounts) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's login check, off the event loop: the argon2 hash (slow on purpose) runs in a worker
    thread, one at a time, so a flood of logins neither blocks other requests nor takes every core."""
    one_at_a_time = asyncio.Semaphore(1)

    async def check(name: str, password: str) -> bool:
        async with one_at_a_time:
            return await run_in_threadpool(accounts.verify_password, name, password)

    return check


def guard_middleware(ctx: AppContext) -> Middleware:
    s = ctx.settings
    sessions = SessionBook(ctx.accounts, ctx.cancels.cancel) if ctx.auth_enabled and ctx.accounts else None
    if sessions is not None:
        ctx.sessions = sessions  # the API routes register their running requests with it
        _sweep_in_background(sessions)
    return Middleware(
        RequestGuard, max_body_bytes=int(s.max_body_mb * 2**20), max_upload_bytes=int(s.max_upload_mb * 2**20),
        max_json_depth=s.max_json_depth, sessions=sessions, throttle=ctx.logins if sessions else None,
        login_script=LOGIN_SCRIPT if sessions else "",
    )


def _sweep_in_background(sessions: SessionBook, every_s: float = 1.0) -> None:
    """End the logins of removed users and changed passwords within a second, even with no request
    arriving (their running generations are cancelled then)."""
    book = weakref.ref(sessions)

    def run() -> None:
        while (alive := book()) is not None:
            try:
                ended = alive.sweep(alive.gradio_tokens)
                if ended:
                    log.warning("Ended the logins of %s (removed, or the password changed)", ", ".join(ended))
            except Exception:  # noqa: BLE001 - a damaged users file is reported by the requests themselves
                log.debug("Session sweep failed", exc_info=True)
            del alive
            time.sleep(every_s)

    threading.Thread(target=run, name="session-sweep", daemon=True).start()


def launch(ctx: AppContext, *, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Start the UI and the API on settings.host:settings.port. Returns the running Blocks."""
    served = ServedFiles(ctx.settings.data_dir / "cache" / "served")
    served.use_for_gradio()
    served.clean()
    served.sweep_in_background()
    ctx.served_copies.append(served.forget)
    demo = build_app(ctx)
    router = build_router(ctx)
    # the page may run as many generations as the most concurrent model allows; each model's own
    # limit is enforced by the registry (a model at its limit makes the request wait, then 'busy')
    demo.queue(default_concurrency_limit=ctx.settings.generation_slots(), max_size=ctx.settings.queue_size)
    guard = guard_middleware(ctx)
    app_kwargs: dict[str, Any] = {"routes": list(router.routes), "exception_handlers": EXCEPTION_HANDLERS,
                                  "middleware": [guard]}
    demo.launch(
        server_name=ctx.settings.host,
        server_port=ctx.settings.port,
        share=ctx.settings.share,
        prevent_thread_lock=True,
        quiet=quiet,
        app_kwargs=app_kwargs,
        show_error=True,
        css=CSS,
        js=JS,
        auth=password_check(ctx.accounts) if ctx.auth_enabled and ctx.accounts else None,
        auth_message="Log in to AIGC Studio. An admin adds users with: python launch.py users add NAME. "
                     "After a few wrong passwords each further try waits longer (1 s, 2 s, 4 s …).",
        max_file_size=int(ctx.settings.max_upload_mb * 2**20),
    )
    sessions = guard.kwargs["sessions"]
    if sessions is not None:
        sessions.gradio_tokens = demo.server_app.tokens  # the sweep ends logins in Gradio's own table too
    return demo
