"""The UI edge: every handler error becomes a readable gr.Error, never a traceback."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from generators.base import StudioError
from storage.db import StorageError

log = logging.getLogger(__name__)


def _translate(exc: Exception) -> gr.Error:
    if isinstance(exc, (StudioError, StorageError)):
        return gr.Error(str(exc))
    log.exception("Unexpected error in a UI handler")
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). Your saved work is safe; the log has details.")


def ui_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Gradio handler (plain or generator) so errors reach the page as messages."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _translate(exc) from exc

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _translate(exc) from exc

    return wrapper
