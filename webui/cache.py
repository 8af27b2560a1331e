"""The folder the page serves files from (Gradio's cache: image copies, uploads, exports).

It lives under the data folder, 0700, emptied at start and swept of old files while the studio runs,
and a deleted output's copies are removed from it at once, so a URL someone kept stops working.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from gradio.processing_utils import hash_file

from storage.files import private_dir

log = logging.getLogger(__name__)

MAX_AGE_S = 6 * 3600.0  # a served copy or export older than this is gone (the original stays in the gallery)
SWEEP_EVERY_S = 600.0


class ServedFiles:
    def __init__(self, root: Path, max_age_s: float = MAX_AGE_S) -> None:
        self.root = private_dir(root)
        self.max_age_s = max_age_s

    def use_for_gradio(self) -> None:
        """Point Gradio at this folder; it reads the variable when components and the server are made,
        so call this before building the app."""
        os.environ["GRADIO_TEMP_DIR"] = str(self.root)

    def clean(self) -> None:
        """Remove everything a previous run left."""
        for entry in self.root.iterdir():
            _remove(entry)

    def sweep(self, now: float | None = None) -> int:
        cutoff = (now or time.time()) - self.max_age_s
        removed = 0
        for entry in self.root.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    _remove(entry)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def sweep_in_background(self, every_s: float = SWEEP_EVERY_S) -> None:
        def run() -> None:
            while True:
                time.sleep(every_s)
                try:
                    self.sweep()
                except OSError:
                    log.warning("Sweeping %s failed", self.root, exc_info=True)

        threading.Thread(target=run, name="served-files-sweep", daemon=True).start()

    def forget(self, path: Path) -> None:
        """Remove every served copy of `path` (call before deleting `path` itself): the copy Gradio
        made (a folder named by the content's hash) and any copy with the same file name."""
        if path.is_file():
            _remove(self.root / hash_file(path))
        for copy in self.root.glob(f"*/{path.name}"):
            _remove(copy.parent if copy.parent != self.root else copy)
        self._forget_views_showing(path.stem)

    def _forget_views_showing(self, image_id: str) -> None:
        """Remove the composite pictures the page was shown (a batch's grid, a strip) that contain the
        image `image_id`: each lists the ids it shows in its own metadata (images.signed_view)."""
        from .services.png import read_meta

        for view in self.root.glob("*/grid*.png"):
            try:
                shown = read_meta(view).get("images") or []
            except Exception:  # noqa: BLE001 - an unreadable file is left to the sweep
                continue
            if any(isinstance(i, dict) and i.get("id") == image_id for i in shown):
                _remove(view.parent if view.parent != self.root else view)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
