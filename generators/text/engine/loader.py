"""Loading a causal LM for the engine: from a source (hub id, folder, GGUF) to a model ready to decode.

`load_causal_lm` does the whole load in the order the choices depend on each other: the device, the
quantizer that runs there (`quantizers.QUANTIZERS`, with `auto` resolved), the source (a GGUF file is
converted once into a safetensors cache), the weights through transformers, an optional PEFT adapter
merged in, the quantizer applied, oneDNN packing where it measures faster, the C++ layer loop of the
lean step where the model allows it, and on an AVX2 CPU an int4 model's layers moved onto the project's
AVX2 kernels (avx2.py), which that library carries. Every refusal is a `LoadFailedError` a person can act on. The
transformers plugin adapts the result to the plugin contract; the memory helpers here serve its
estimates. Importing this module imports no torch.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...base import LoadFailedError, ProgressFn
from ..model_source import ensure_gguf_cache, resolve_source
from .quantizers import QUANTIZERS, Quantizer

log = logging.getLogger(__name__)


class LoadSpec(Protocol):
    """What a load needs to know (the transformers plugin's load options)."""

    source: str
    quantization: str
    device: str
    dtype: str
    allow_download: bool
    trust_remote_code: bool
    max_batch: int
    pack_weights: bool
    adapter: str | None
    native_step: bool


@dataclass
class LoadedLM:
    """A loaded model with what was decided on the way."""

    model: Any
    tokenizer: Any
    device: str  # "cpu" / "cuda"
    quantizer: Quantizer  # the one that ran (`auto` resolved)
    location: str  # the folder or id the weights were read from (a GGUF's converted cache)
    packed_layers: int = 0  # Linear layers stored packed for oneDNN (bfloat16 on a CPU, where faster)
    native: Any = None  # the C++ layer loop of the lean step, or None


def pick_device(want: str, has_cuda: bool) -> str:
    """The device `want` ("auto" / "cpu" / "cuda") means on this machine."""
    if want == "cuda" and not has_cuda:
        raise LoadFailedError(
            "device=cuda was requested but PyTorch sees no CUDA GPU here. Pick device=auto or device=cpu."
        )
    return "cuda" if want == "cuda" or (want == "auto" and has_cuda) else "cpu"


def check_load(spec: LoadSpec) -> None:
    """The device and quantization checks a load runs first, without reading any weights."""
    import torch

    device = pick_device(spec.device, torch.cuda.is_available())
    if (reason := QUANTIZERS[spec.quantization].refusal(device, spec.dtype)) is not None:
        raise LoadFailedError(reason)


def load_causal_lm(spec: LoadSpec, name: str, cache_dir: str | None, progress: ProgressFn) -> LoadedLM:
    """Load `spec.source` as `spec` says (see the module's docstring for the steps)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(spec.device, torch.cuda.is_available())
    quantizer = QUANTIZERS[spec.quantization].resolve(device, spec.dtype)
    if (reason := quantizer.refusal(device, spec.dtype)) is not None:
        raise LoadFailedError(reason)
    src = resolve_source(spec.source)
    location = src.location
    if src.is_gguf:
        if not cache_dir:
            raise LoadFailedError("A GGUF source needs a cache folder (set the data folder).")
        location = str(ensure_gguf_cache(src.gguf_path(cache_dir, progress), cache_dir, progress))
    progress(f"Loading {name} weights on {device}…")
    local_only = not spec.allow_download
    kwargs: dict[str, Any] = {"dtype": quantizer.load_dtype(spec.dtype, device), "local_files_only": local_only}
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if (config := quantizer.transformers_config()) is not None:
        quiet_bitsandbytes()
        kwargs["quantization_config"] = config
        kwargs["device_map"] = {"": 0} if device == "cuda" else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except OSError as exc:
        if src.kind == "hub" and local_only:
            raise LoadFailedError(
                f"{spec.source!r} is not a local folder and is not in the local Hugging Face cache. "
                "Download it yourself, point `source` at the folder, or set allow_download=true."
            ) from exc
        raise
    if spec.adapter:
        model = merge_adapter(model, spec.adapter, progress)
    if config is None:
        model.to(device)
    model = quantizer.apply(model.eval(), spec.dtype, progress)
    loaded = LoadedLM(model, tokenizer, device, quantizer, location)
    if quantizer.float_weights and spec.pack_weights and device == "cpu":
        from .onednn import pack_linear_layers_if_faster

        loaded.packed_layers = pack_linear_layers_if_faster(model)
    if spec.max_batch > 1 and spec.native_step and cache_dir:
        loaded.native = native_layers(model, cache_dir, name, progress)
    if quantizer.name == "int4" and spec.native_step and cache_dir:
        from .avx2 import use_avx2_kernels_where_they_pay

        use_avx2_kernels_where_they_pay(model, Path(cache_dir) / "_native")
    return loaded


def merge_adapter(model: Any, adapter: str, progress: ProgressFn) -> Any:
    """The base with a PEFT adapter merged in: one plain model, so every decoding path and quantizer works."""
    from peft import PeftModel

    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise LoadFailedError(f"The adapter {str(path)!r} is not a PEFT adapter folder (no adapter_config.json).")
    progress(f"Applying the adapter {path.name}…")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as exc:
        raise LoadFailedError(f"The adapter {path.name!r} does not fit this base model: {exc}") from exc


def native_layers(model: Any, cache_dir: str, name: str, progress: ProgressFn) -> Any:
    """The C++ layer loop for the lean step (built into the cache folder the first time), or None."""
    from .native import load_native_layers
    from .step import LeanLlamaStep

    if LeanLlamaStep.unsupported(model) is not None:
        return None
    progress("Loading the C++ decoding loop (built once)…")
    op, reason = load_native_layers(Path(cache_dir) / "_native")
    if op is None:
        log.warning("%s decodes through the Python loop: %s", name, reason)
    return op


def memory_bytes(model: Any) -> int:
    """Bytes a loaded model holds, with the packed weights of dynamic int8 layers (kept outside parameters)."""
    total = int(model.get_memory_footprint())
    for module in model.modules():
        if callable(getattr(module, "weight", None)) and callable(getattr(module, "bias", None)):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)
    return total


def estimated_memory_bytes(spec: LoadSpec, device: str | None = None) -> int:
    """A guess, before loading, of the memory `spec` will hold on `device` (None: the one its option names;
    0: cannot tell). `auto` counts what it will pick there (int4 keeps a fifth of float32)."""
    try:
        src = resolve_source(spec.source)
    except LoadFailedError:
        return 0
    device = device or ("cuda" if spec.device == "cuda" else "cpu")
    quantizer = QUANTIZERS[spec.quantization].resolve(device, spec.dtype)
    path = Path(src.location)
    if src.kind == "gguf-parts":
        size = 260 * 2**20  # not assembled yet: the size of the model the package ships (Gemma 3 270M)
    else:
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if src.is_gguf:
        size *= 5  # 4–5 bit GGUF → float32 weights in memory
    return int(size * quantizer.memory_factor)


class _OnceFilter(logging.Filter):
    """Lets each distinct message through once: bitsandbytes' 8-bit matmul logs the same cast warning on
    every layer of every step, which would bury the server log."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def quiet_bitsandbytes() -> None:
    """Install the once-filter on bitsandbytes' chatty logger (idempotent)."""
    chatty = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in chatty.filters):
        chatty.addFilter(_OnceFilter())
