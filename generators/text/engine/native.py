"""Builds and loads the C++ layer loop of the lean decoding step (`csrc/lean_layers.cpp`) and the AVX2
int4/int8 matmul kernels it can call (`csrc/avx2_kernels.cpp`, used through avx2.py).

The loop runs the same ATen operators as `LeanLlamaStep`'s Python loop, so its logits are the same
bit for bit; it only removes the interpreter between them. It is compiled once per PyTorch version
and source with `torch.utils.cpp_extension` (g++ and ninja) into a build folder that later loads
reuse, and registered as `torch.ops.aigc.lean_layers`. Without a compiler, or when the build fails,
`load_native_layers` says why and the step keeps its Python loop: slower, never broken.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("lean_layers.cpp", "avx2_kernels.cpp")]
# -fopenmp: at::parallel_for is inline OpenMP (without it the kernels run on one thread); the library then
# binds to the libgomp PyTorch has loaded already (the same soname): one thread pool.
CFLAGS, LDFLAGS = ["-O2", "-fopenmp"], ["-fopenmp"]
_build_lock = threading.Lock()  # one build at a time in this process (the library registers once per process)


def _registered() -> Any:
    import torch

    try:
        return torch.ops.aigc.lean_layers
    except (AttributeError, RuntimeError):
        return None


def build_folder(root: str | Path) -> Path:
    """Where the library for this source and this PyTorch is built under `root`."""
    import torch

    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES) + " ".join(CFLAGS + LDFLAGS).encode()
                            ).hexdigest()[:12]
    return Path(root) / f"lean_layers-torch{torch.__version__.replace('+', '_')}-{digest}"


def _ninja_on_path() -> bool:
    """ninja from PATH, or the pip `ninja` package next to this interpreter (a venv used without activating it)."""
    if shutil.which("ninja"):
        return True
    scripts = Path(sys.executable).parent
    if (scripts / "ninja").is_file():
        os.environ["PATH"] = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
        return True
    return False


STALE_LOCK_SECONDS = 600  # a build takes ~20 s; a lock this old was left by a process killed while building


def _clear_stale_lock(folder: Path) -> None:
    """torch.utils.cpp_extension waits for its `lock` file to go away, forever: one left by a build that
    was killed (Ctrl-C during the first load) would hang every later load."""
    import time

    lock = folder / "lock"
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
            log.warning("Removed a stale build lock %s", lock)
    except FileNotFoundError:
        pass


def load_native_layers(root: str | Path) -> tuple[Any, str]:
    """(torch.ops.aigc.lean_layers, "") — built under `root` if not built yet — or (None, why not)."""
    with _build_lock:
        op = _registered()
        if op is not None:
            return op, ""
        compiler = os.environ.get("CXX", "c++")
        if not shutil.which(compiler):
            return None, f"no C++ compiler ({compiler!r} is not on PATH; Debian: apt-get install g++)"
        if not _ninja_on_path():
            return None, "ninja is not installed (pip install ninja)"
        from torch.utils.cpp_extension import load

        folder = build_folder(root)
        folder.mkdir(parents=True, exist_ok=True)
        _clear_stale_lock(folder)
        try:
            load("aigc_lean_layers", [str(source) for source in SOURCES], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
                 build_directory=str(folder), is_python_module=False, verbose=False)
        except (RuntimeError, OSError, ImportError) as exc:  # a compiler error, a missing header, a broken build folder
            log.warning("The C++ decoding loop did not build in %s: %s", folder, exc)
            return None, f"the C++ loop did not build: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}"
        op = _registered()
        return (op, "") if op is not None else (None, "the built library registered no aigc::lean_layers")
