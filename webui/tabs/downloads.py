"""One-step exports: pressing "Export .md" saves the file, with no second link to find and click.

The export handler writes the file and hands it to a DownloadButton kept in the page but out of sight
(`visible="hidden"`); a browser-side step then clicks it, so the browser's own download starts. API
clients get the file as the handler's output, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

_CLICK = """() => {{
  const deadline = Date.now() + 5000;
  const tryClick = () => {{
    const slot = document.querySelector("#{slot}");
    const target = slot && (slot.matches("button, a") ? slot : slot.querySelector("a[href], button"));
    if (target) {{ target.click(); return; }}
    if (Date.now() < deadline) setTimeout(tryClick, 100);
  }};
  setTimeout(tryClick, 50);
}}"""


def download_slot(elem_id: str) -> gr.DownloadButton:
    """The out-of-sight DownloadButton an export hands its file to (create it inside the layout)."""
    return gr.DownloadButton("Download", visible="hidden", elem_id=elem_id)


def wire_export(button: gr.Button, handler: Callable[..., Any], inputs: Any, slot: gr.DownloadButton,
                **event: Any) -> None:
    """`handler` returns the path of the written file; the browser downloads it at once."""
    button.click(handler, inputs, slot, **event).success(None, None, None, js=_CLICK.format(slot=slot.elem_id))
