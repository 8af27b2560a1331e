"""The generator plugin contract: what every plugin declares, accepts and yields.

A plugin is one class with a class-level `info`, a pydantic `LoadOptions` model (how it
is loaded: source, device, quantization …) and a pydantic `Params` model (per-request
parameters with defaults and bounds). Nothing here imports torch: importing a plugin
module must be free of side effects.

A plugin runs its tensor work on the process's compute lane (`generators.compute`: `lane().call`,
`lane().iterate`), never in the caller's thread: one thread doing all of it is what keeps torch's
OpenMP threads from oversubscribing the CPU. `load` already runs `_load` off the caller's thread.

    from generators.registry import Registry
    reg = Registry.discover()
    for chunk in reg.get("smollm2-135m-instruct").stream(TextRequest(messages=[...])):
        print(chunk.text, end="")
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .compute import in_fresh_thread

Modality = Literal["text", "image"]
ProgressFn = Callable[[str], None]

# Capabilities a plugin may declare; the registry and services trust them, never class names.
CAP_STREAM = "stream"
CAP_CHAT = "chat"  # understands role-tagged messages (has a chat template)
CAP_COMPLETION = "completion"  # continues raw text
CAP_CANCEL = "cancel"
CAP_QUANTIZATION = "quantization"
CAP_SEED = "seed"
CAP_LOGPROBS = "logprobs"  # text: log-probabilities of the chosen tokens (and the likeliest alternatives)
CAP_INTERPOLATE = "interpolate"  # image: latent walk between two (class, seed) ends
CAP_RECONSTRUCT = "reconstruct"  # image: encode a given image, decode it (as any class)


# ---------------------------------------------------------------- errors


class StudioError(Exception):
    """Base of every error whose message is meant for a person."""

    code = "studio_error"
    http_status = 500


class UnknownGeneratorError(StudioError):
    code = "model_not_found"
    http_status = 404


class InvalidOptionsError(StudioError):
    code = "invalid_request_error"
    http_status = 400


class LoadFailedError(StudioError):
    code = "model_load_failed"
    http_status = 503


class GenerationFailedError(StudioError):
    code = "generation_failed"
    http_status = 500


class BusyError(StudioError):
    code = "busy"
    http_status = 429

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when trying again makes sense (the HTTP API's Retry-After)


def describe_validation_error(exc: ValidationError, what: str = "parameter") -> str:
    """Turn a pydantic error into one sentence a person can act on."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or what
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "is not a known setting"
        parts.append(f"{loc}: {msg}")
    return f"Invalid {what}s — " + "; ".join(parts)


def validate_model(model: type[BaseModel], values: dict[str, Any] | None, what: str = "parameter") -> Any:
    """Validate `values` against a pydantic model, raising InvalidOptionsError on failure."""
    try:
        return model.model_validate(values or {})
    except ValidationError as exc:
        raise InvalidOptionsError(describe_validation_error(exc, what)) from None


# ---------------------------------------------------------------- options


class StrictModel(BaseModel):
    """Options models reject unknown keys: a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingParams(StrictModel):
    """Per-request sampling parameters shared by the text plugins."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy (deterministic)")
    top_p: float = Field(0.95, ge=0.0, le=1.0, description="nucleus sampling mass (0 = only the likeliest token)")
    top_k: int = Field(50, ge=0, le=1000, description="0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="drop tokens below min_p × top probability")
    repetition_penalty: float = Field(1.0, ge=0.5, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted once from the logit of every token "
                                    "already generated (OpenAI's presence_penalty)")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from a token's logit once per time "
                                     "it was generated (OpenAI's frequency_penalty)")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="empty = random")
    stop: tuple[str, ...] = Field((), max_length=8, description="strings that end the reply")

    @model_validator(mode="after")
    def _no_empty_stop(self) -> "SamplingParams":
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class GeneratorInfo:
    """What a plugin says about itself."""

    plugin: str  # plugin id, e.g. "transformers"
    modality: Modality
    family: str  # e.g. "causal-lm", "gan", "vae"
    description: str
    capabilities: frozenset[str]
    params: type[BaseModel]  # per-request parameters (defaults + bounds)
    load_options: type[BaseModel]  # how an instance is loaded

    def param_schema(self) -> dict[str, Any]:
        """JSON schema of the request parameters, with defaults and bounds."""
        return self.params.model_json_schema()


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class TextRequest:
    """A chat (messages) or a raw completion (prompt) request.

    `logprobs`: None = none; k >= 0 = each generated token's log-probability and the k likeliest
    alternatives (plugins with CAP_LOGPROBS)."""

    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not self.messages):
            raise InvalidOptionsError("A text request needs either messages or a prompt, not both.")


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    seed: int
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    dropped_messages: int = 0  # oldest turns dropped to fit the context window


@dataclass(frozen=True)
class TokenLogprob:
    """One token as the model scored it: its text, its log-probability (natural log, from the model's own
    distribution before sampling settings), and the likeliest alternatives as (text, logprob), best first.
    `logprob` is None for a prompt's first token, which nothing predicts."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """One streamed piece of text. The last chunk has `finish_reason` and `stats`.

    `logprobs`: the tokens decoded since the previous chunk, when the request asked for them."""

    text: str
    finish_reason: Literal["stop", "length", "cancelled"] | None = None
    stats: GenerationStats | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ImageEnd:
    """One end of an image request: which class (index into `class_names`) from which seed.

    Every image has its own seed, so any image of a batch can be made again on its own.
    """

    label: int
    seed: int


@dataclass(frozen=True)
class ImageOutput:
    """Images as uint8 arrays (N, H, W, C), with what identifies the weights that made them."""

    pixels: Any  # numpy.ndarray, uint8, (N, H, W, C)
    weights_hash: str


# ---------------------------------------------------------------- plugin base


class Generator(ABC):
    """Base class of every plugin: lifecycle, locking and option validation.

    Subclasses set `info`, implement `_load`/`_unload` and a modality method
    (`stream` for text, `generate` for images).
    """

    info: ClassVar[GeneratorInfo]

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        self.name = name
        self.options = validate_model(self.info.load_options, options, "load option")
        self.cache_dir = cache_dir
        self._lock = threading.RLock()
        self._loaded = False

    # -- lifecycle (idempotent, thread-safe)
    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self, progress: ProgressFn | None = None) -> None:
        """Load once. `_load` runs in a short-lived thread, so the OpenMP team its tensor work creates
        leaves with it (see `generators.compute`) and a long load stalls no one's stream."""
        with self._lock:
            if self._loaded:
                return
            in_fresh_thread(self._load, progress or (lambda _msg: None))
            self._loaded = True

    def unload(self) -> None:
        with self._lock:
            if not self._loaded:
                return
            self._unload()
            self._loaded = False
            release_accelerator_memory()

    @abstractmethod
    def _load(self, progress: ProgressFn) -> None: ...

    @abstractmethod
    def _unload(self) -> None: ...

    # -- memory
    def estimated_memory_bytes(self) -> int:
        """Best guess of the memory a load will take, before loading."""
        return 0

    def memory_bytes(self) -> int:
        """Memory held now (0 when unloaded)."""
        return 0

    @property
    def default_concurrency(self) -> int:
        """Generations that run at once when the configuration does not say (a batching plugin: its batch)."""
        return 1

    def describe(self) -> dict[str, Any]:
        """Plain data for the Models view and /v1/models."""
        return {
            "name": self.name,
            "plugin": self.info.plugin,
            "modality": self.info.modality,
            "family": self.info.family,
            "description": self.info.description,
            "capabilities": sorted(self.info.capabilities),
            "loaded": self.loaded,
            "memory_bytes": self.memory_bytes(),
            "options": self.options.model_dump(mode="json"),
        }


class TextGenerator(Generator):
    """A text plugin streams chunks; `generate` is the stream joined."""

    @abstractmethod
    def stream(self, request: TextRequest, cancel: threading.Event | None = None) -> Iterator[TextChunk]: ...

    def generate(self, request: TextRequest, cancel: threading.Event | None = None) -> tuple[str, TextChunk]:
        parts: list[str] = []
        last = TextChunk("")
        for chunk in self.stream(request, cancel):
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` for this model (plugins override with their tokenizer)."""
        return max(1, len(text) // 4)

    @property
    def context_window(self) -> int:
        return 2048

    def log_likelihood(self, text: str, cancel: threading.Event | None = None) -> tuple[float, int]:
        """(negative log-likelihood of `text` in nats, number of tokens it was scored over).

        For perplexity and bits per character; plugins that cannot score text say so."""
        raise InvalidOptionsError(f"{self.name} cannot score text (no log-likelihood).")

    def prompt_logprobs(self, text: str, top: int = 0) -> list[TokenLogprob]:
        """Every token of `text` as the model scores it (the first one's logprob is None); plugins with
        CAP_LOGPROBS implement it (the completions API's echo with logprobs)."""
        raise InvalidOptionsError(f"{self.name} cannot return log-probabilities.")

    def supports_chat(self) -> bool:
        """Whether role-tagged messages work well (an instruct model with a chat template);
        False means plain text continuation (`TextRequest(prompt=...)`) suits it better."""
        return CAP_CHAT in self.info.capabilities


class ImageGenerator(Generator):
    """An image plugin: class-conditional sampling from seeds; optional latent walks and reconstruction.

    `params` is a validated instance of `info.params`. Same weights, params and seeds give the
    same pixels on CPU, whatever the batch size.
    """

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Class names, known without loading the weights."""

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int, int]:
        """(height, width, channels)."""

    @abstractmethod
    def sample(self, ends: Sequence[ImageEnd], params: BaseModel) -> ImageOutput: ...

    def interpolate(self, start: ImageEnd, end: ImageEnd, frames: int, params: BaseModel) -> ImageOutput:
        raise InvalidOptionsError(f"{self.name} cannot interpolate between images.")

    def reconstruct(self, pixels: Any, label: int, targets: Sequence[int]) -> ImageOutput:
        """Encode `pixels` (H, W, C uint8, already at `image_size`) as class `label`, decode as each target."""
        raise InvalidOptionsError(f"{self.name} cannot reconstruct images.")


def release_accelerator_memory() -> None:
    """Give cached accelerator memory back after an unload (no-op without torch/CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
