"""The quantizers: one table of how a language model's weights may be stored, read by everyone.

Each `Quantizer` says what it needs (a device, a dtype, a package, a kernel), why it refuses a
combination (`refusal`, a sentence a person can act on), what weights it loads (`load_dtype`), how it
applies (`transformers_config` for bitsandbytes, `apply` after loading) and how much memory it keeps
of the float weights (`memory_factor`). The CLI (`launch.py --quantization`), the settings, the
Models view and the transformers plugin all read their choices from `QUANTIZERS`; nothing else
branches on a quantization name. Importing this module imports no torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ProgressFn = Callable[[str], None]

DEFAULT_QUANTIZATION = "none"  # a plugin built without options runs the weights as they are
STUDIO_QUANTIZATION = "auto"  # what the studio configures for its language models unless told otherwise


@dataclass(frozen=True)
class Quantizer:
    """Plain weights in the requested dtype: the base of every entry, and the `none` entry itself."""

    name: str
    help: str  # one line for the CLI, the settings and the Models view
    memory_factor: float = 1.0  # bytes kept per byte of float32 weights (before loading: a memory estimate)
    float_weights: bool = True  # Linear layers stay plain float (so oneDNN packing may apply)

    def resolve(self, device: str, dtype: str) -> Quantizer:
        """The quantizer that runs on `device` with `dtype`: itself, but for `auto`, which picks one."""
        return self

    def refusal(self, device: str, dtype: str) -> str | None:
        """Why this quantizer cannot run on `device` ("cpu"/"cuda") with `dtype`, or None."""
        return None

    def load_dtype(self, dtype: str, device: str) -> Any:
        """The torch dtype the weights are loaded in."""
        import torch

        if dtype == "auto":
            return torch.bfloat16 if device == "cuda" else torch.float32
        return getattr(torch, dtype)

    def transformers_config(self) -> Any:
        """A `quantization_config` for `from_pretrained`, or None."""
        return None

    def apply(self, model: Any, dtype: str, progress: ProgressFn) -> Any:
        """The loaded model with this quantizer's layers (may be a new object)."""
        return model


@dataclass(frozen=True)
class BitsAndBytes(Quantizer):
    """bitsandbytes through transformers' `BitsAndBytesConfig`: 8-bit, or 4-bit NF4 with bfloat16 compute."""

    bits: int = 8
    float_weights: bool = False

    def refusal(self, device: str, dtype: str) -> str | None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            return (f"quantization={self.name} needs the bitsandbytes package ({exc}). "
                    "Install it (pip install bitsandbytes) or pick quantization=none.")
        return None

    def transformers_config(self) -> Any:
        import torch
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)


@dataclass(frozen=True)
class Int4(Quantizer):
    """4-bit weights in groups of 32 on PyTorch's CPU int4 kernel, 8-bit head and embedding (int4.py)."""

    float_weights: bool = False

    def refusal(self, device: str, dtype: str) -> str | None:
        if device != "cpu":
            return (f"quantization={self.name} runs on the CPU only. On a GPU pick 8bit or 4bit (bitsandbytes), "
                    "or set device=cpu.")
        if dtype == "float16":
            return f"quantization={self.name} computes in bfloat16 or float32: set dtype=auto, bfloat16 or float32."
        from .int4 import int4_supported

        if not int4_supported():
            import torch

            return (f"quantization={self.name} needs PyTorch's CPU int4 kernel, which torch {torch.__version__} "
                    "lacks. Pick 4bit (bitsandbytes) or dynamic-int8.")
        return None

    def load_dtype(self, dtype: str, device: str) -> Any:
        import torch

        return torch.float32  # quantized from float32 weights; the activations' dtype is set in `apply`

    def apply(self, model: Any, dtype: str, progress: ProgressFn) -> Any:
        import torch

        from .int4 import activations_dtype, quantize_int4, use_bfloat16_activations

        progress("Packing the weights as 4-bit groups…")
        quantize_int4(model)
        if activations_dtype(dtype) == torch.bfloat16:  # the kernels take and return bfloat16: no conversion around each
            use_bfloat16_activations(model)
        return model


@dataclass(frozen=True)
class DynamicInt8(Quantizer):
    """PyTorch dynamic int8 Linear layers: int8 weights per channel, activations quantized per call."""

    float_weights: bool = False

    def refusal(self, device: str, dtype: str) -> str | None:
        if device != "cpu":
            return (f"quantization={self.name} runs on the CPU only. On a GPU pick 8bit or 4bit (bitsandbytes), "
                    "or set device=cpu.")
        if dtype not in ("auto", "float32"):
            return f"quantization={self.name} works on float32 weights: set dtype=auto or float32."
        return None

    def load_dtype(self, dtype: str, device: str) -> Any:
        import torch

        return torch.float32

    def apply(self, model: Any, dtype: str, progress: ProgressFn) -> Any:
        import torch
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True)
class Auto(Quantizer):
    """The fastest precision whose held-out perplexity stays within +5 % of float32 on the device
    (bench_precision, bench_api): int4 on a CPU with PyTorch's int4 kernel and a dtype it computes in — a
    decoding step reads every weight once, so it is bound by memory traffic, and 4-bit weights move an
    eighth of float32's (on AVX-512 and AVX2 CPUs alike; a single layer whose weights stay in cache is
    another story: bench_int4_kernel) — else the weights as they are (on CUDA: bfloat16). Never itself
    loads: `resolve` names the one that does."""

    def resolve(self, device: str, dtype: str) -> Quantizer:
        int4 = QUANTIZERS["int4"]
        if device == "cpu" and dtype in ("auto", "bfloat16", "float32") and int4.refusal(device, dtype) is None:
            return int4
        return QUANTIZERS["none"]

    def refusal(self, device: str, dtype: str) -> str | None:
        return self.resolve(device, dtype).refusal(device, dtype)


QUANTIZERS: dict[str, Quantizer] = {q.name: q for q in (
    Auto("auto", "the fastest within +5 % perplexity of float32 on the device (a CPU: int4; CUDA: none, "
         "computing in bfloat16)", memory_factor=0.2),
    Quantizer("none", "weights as loaded (dtype)"),
    BitsAndBytes("8bit", "bitsandbytes 8-bit", memory_factor=0.3, bits=8),
    BitsAndBytes("4bit", "bitsandbytes 4-bit NF4, bfloat16 compute", memory_factor=0.2, bits=4),
    Int4("int4", "4-bit groups of 32, 8-bit head, on PyTorch's CPU kernel or, on an AVX2 CPU, the project's AVX2 "
         "kernels (the fastest CPU choice; a Q4_1 GGUF keeps its own 4-bit weights)", memory_factor=0.2),
    DynamicInt8("dynamic-int8", "PyTorch dynamic int8 Linear layers (CPU; models with activation outliers lose "
                "accuracy)", memory_factor=0.35),
)}
QUANTIZATION_CHOICES: tuple[str, ...] = tuple(QUANTIZERS)


def quantization_help() -> str:
    """One line per choice, for a CLI flag or a form field."""
    return "; ".join(f"{q.name}: {q.help}" for q in QUANTIZERS.values())


def describe_precision(chosen: str, running: Quantizer, device: str, dtype: str, model: Any) -> str:
    """What a loaded model runs and why, in words (the Models view): `chosen` is the option, `running` the
    quantizer it resolved to on `device`, `dtype` the dtype option."""
    why = " — auto: the fastest within +5 % perplexity of float32 here" if chosen == "auto" else ""
    if chosen == "auto" and device == "cpu" and running.name == "none":
        why = " — auto: this PyTorch has no CPU int4 kernel, or int4 cannot compute in this dtype"
    if running.name == "int4":
        from .avx2 import Int4Avx2Linear
        from .int4 import activations_dtype

        compute = str(activations_dtype(dtype)).replace("torch.", "")
        kernel = "the AVX2 kernels" if any(isinstance(m, Int4Avx2Linear) for m in model.modules()) else "PyTorch's kernel"
        return f"int4 weights on {kernel}, {compute} between them{why}"
    model_dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
    return f"{running.name if running.name != 'none' else model_dtype}{why}"
