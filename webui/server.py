"""Wire settings → registry + store → Gradio app + HTTP API, and serve them on one port."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from generators.base import StudioError
from generators.registry import ModelSpec, Registry
from storage import Store

from .api import EXCEPTION_HANDLERS, build_router
from .app import CSS, JS, build_app
from .services.context import AppContext
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
    return AppContext(settings=settings, registry=registry, store=store)


def launch(ctx: AppContext, *, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Start the UI and the API on settings.host:settings.port. Returns the running Blocks."""
    demo = build_app(ctx)
    router = build_router(ctx)
    # the page may run as many generations as the most concurrent model allows; each model's own
    # limit is enforced by the registry (a model at its limit makes the request wait, then 'busy')
    demo.queue(default_concurrency_limit=ctx.settings.generation_slots(), max_size=ctx.settings.queue_size)
    app_kwargs: dict[str, Any] = {"routes": list(router.routes), "exception_handlers": EXCEPTION_HANDLERS}
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
        auth=ctx.accounts.verify_password if ctx.auth_enabled else None,
        auth_message="Log in to AIGC Studio. An admin adds users with: python launch.py users add NAME",
    )
    return demo
