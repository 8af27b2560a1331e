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
    with reg.use("smollm2-135m-instruct") as gen:  # loaded (once) and held for this generation
        for chunk in gen.stream(TextRequest(messages=(ChatMessage("user", "Hello!"),))):
            print(chunk.text, end="")
"""

from __future__ import annotations

import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .compute import in_fresh_thread, lane

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
CAP_LOGIT_BIAS = "logit-bias"  # text: applies `SamplingParams.logit_bias` (token ids of its `vocabulary_size`)
CAP_INSTRUCT_TEMPLATE = "instruct-template"  # text: renders messages with a template the request brings
CAP_CONTINUE_TURN = "continue-turn"  # text: continues a request's last (assistant) message instead of answering it
CAP_INTERPOLATE = "interpolate"  # image: latent walk between two (class, seed) ends
CAP_RECONSTRUCT = "reconstruct"  # image: encode a given image, decode it (as any class)
CAP_CLASS_CONDITIONAL = "class-conditional"  # image: `sample` draws (class, seed) ends
CAP_TEXT_TO_IMAGE = "text-to-image"  # image: `paint` from a prompt alone
CAP_IMAGE_TO_IMAGE = "image-to-image"  # image: `paint` from a prompt and an init image (strength)
CAP_INPAINT = "inpaint"  # image: `paint` repaints the masked part of an init image
CAP_LORA = "lora"  # image: LoRA files applied with a weight (`PromptParams.loras`)
CAP_STEPS = "steps"  # image: reports each denoising step to a `StepControl` and stops between steps
CAP_TRAJECTORY = "trajectory"  # image: `trajectory` returns x_t at chosen denoising steps (diffusion)

PROMPTED_CAPABILITIES = frozenset({CAP_TEXT_TO_IMAGE, CAP_IMAGE_TO_IMAGE, CAP_INPAINT})


# ---------------------------------------------------------------- errors


class StudioError(Exception):
    """Base of every error whose message is meant for a person."""

    code = "studio_error"
    http_status = 500


class UnknownGeneratorError(StudioError):
    code = "model_not_found"
    http_status = 404


class InvalidOptionsError(StudioError):
    """A request or option a person must change; `param` names the field when one is to blame (the HTTP API
    reports it as OpenAI's `param`)."""

    code = "invalid_request_error"
    http_status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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


class GenerationCancelledError(StudioError):
    """Raised between two steps when the caller's cancel event is set; nothing of the request is kept."""

    code = "cancelled"
    http_status = 409


class OutOfMemoryError(GenerationFailedError):
    """A generation ran out of memory (host or accelerator); the message says what to change."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory failure, told by its type (never its name): MemoryError, torch's
    OutOfMemoryError (CUDA), triton's OutOfResources, or an OutOfMemoryError. Imports neither library: one
    that is not loaded raised nothing."""
    kinds: list[type[BaseException]] = [MemoryError, OutOfMemoryError]
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "OutOfMemoryError"):
        kinds.append(torch.OutOfMemoryError)
    triton_errors = sys.modules.get("triton.runtime.errors")
    if triton_errors is not None and hasattr(triton_errors, "OutOfResources"):
        kinds.append(triton_errors.OutOfResources)
    return isinstance(exc, tuple(kinds))


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


DRY_BREAKERS = ("\n", ":", '"', "*")  # text-generation-webui's and koboldcpp's defaults
MAX_LOGIT_BIAS = 300  # OpenAI's bound on the tokens one request may bias
_TokenId = Annotated[int, Field(ge=0, lt=2**31)]
_Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class SamplingParams(StrictModel):
    """Per-request sampling parameters shared by the text plugins."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="0 = greedy (deterministic)")
    top_p: float = Field(0.95, ge=0.0, le=1.0, description="nucleus sampling mass (0 = only the likeliest token)")
    top_k: int = Field(50, ge=0, le=1000, description="0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="drop tokens below min_p × top probability")
    repetition_penalty: float = Field(1.0, ge=0.5, le=2.0, description="1 = off; above 1 makes repeating words less likely")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted once from the logit of every token "
                                    "already generated (OpenAI's presence_penalty)")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from a token's logit once per time "
                                     "it was generated (OpenAI's frequency_penalty)")
    typical_p: float = Field(1.0, ge=0.01, le=1.0, description="locally typical sampling: keep the tokens whose "
                             "surprise is closest to the average, up to this mass (1 = off)")
    dry_multiplier: float = Field(0.0, ge=0.0, le=5.0, description="DRY: penalise a token that would extend a "
                                  "sequence already in the context (0 = off; 0.8 is usual)")
    dry_base: float = Field(1.75, ge=1.0, le=4.0, description="DRY: how fast the penalty grows with the length "
                            "of the repeated sequence")
    dry_allowed_length: int = Field(2, ge=1, le=20, description="DRY: repeats up to this many tokens go "
                                    "unpenalised")
    dry_sequence_breakers: tuple[str, ...] = Field(DRY_BREAKERS, max_length=16, description="DRY: text that "
                                                   "ends a sequence (a repeat never reaches across it)")
    xtc_threshold: float = Field(0.1, ge=0.0, le=0.5, description="XTC: tokens at least this likely count as "
                                 "top choices")
    xtc_probability: float = Field(0.0, ge=0.0, le=1.0, description="XTC: how often the top choices except "
                                   "the least likely of them are excluded (0 = off)")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="empty = random")
    stop: tuple[str, ...] = Field((), max_length=8, description="strings that end the reply")
    logit_bias: dict[_TokenId, _Bias] = Field(
        default_factory=dict, max_length=MAX_LOGIT_BIAS, description="token id → a value added to its logit before "
        "sampling (OpenAI's logit_bias: -100 in effect bans the token, 100 forces it); ids are the model's own")

    @model_validator(mode="after")
    def _no_empty_stop(self) -> "SamplingParams":
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if any(not 1 <= len(b) <= 20 for b in self.dry_sequence_breakers):
            raise ValueError("each DRY sequence breaker must be 1 to 20 characters long")
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


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class TextRequest:
    """A chat (messages) or a raw completion (prompt) request.

    `logprobs`: None = none; k >= 0 = each generated token's log-probability and the k likeliest
    alternatives (plugins with CAP_LOGPROBS). `template`: a Jinja chat template that replaces the model's
    own for `messages` (plugins with CAP_INSTRUCT_TEMPLATE); None = the model's own. `continue_turn`: the
    last message is the start of the model's own (assistant) turn, which it continues without closing it
    (transformers' `continue_final_message`; plugins with CAP_CONTINUE_TURN) — how an instruct model
    writes on in a story instead of answering it."""

    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    logprobs: int | None = None
    template: str | None = None
    continue_turn: bool = False

    def __post_init__(self) -> None:
        if (self.prompt is None) == (not self.messages):
            raise InvalidOptionsError("A text request needs either messages or a prompt, not both.")
        if self.continue_turn and (not self.messages or self.messages[-1].role != "assistant"):
            raise InvalidOptionsError("Continuing a turn needs messages that end with the assistant's message.")


@dataclass(frozen=True)
class RenderedPrompt:
    """What a text model reads for a request: the text after the template, its tokens, messages left out."""

    text: str
    tokens: int
    dropped_messages: int = 0


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    seed: int
    time_to_first_token_s: float | None
    tokens_per_s: float | None
    dropped_messages: int = 0  # oldest turns dropped to fit the context window


class StreamClock:
    """The timing and counts of one text stream. A plugin's step loop reports to it — `begin` once the
    prompt is known, `token` per sampled token (from whichever thread decodes: one at a time) — and the
    contract (`TextGenerator.stream`) turns it into the `GenerationStats` of the last chunk, so time to
    first token and tokens/s mean the same for every plugin."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.tokens = 0
        self.prompt_tokens = 0
        self.seed = 0
        self.dropped_messages = 0

    def begin(self, prompt_tokens: int, seed: int, dropped_messages: int = 0) -> None:
        self.prompt_tokens, self.seed, self.dropped_messages = prompt_tokens, seed, dropped_messages

    def token(self, count: int = 1) -> None:
        """A token was sampled; `count` of them are part of the reply (0 for the end-of-text token, which
        still ends the wait for the first token)."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.tokens += count

    def stats(self) -> GenerationStats:
        """The stats as of now: time to first token from the start of the call, tokens/s over the decode."""
        decode_s = time.perf_counter() - self.first_token_at if self.first_token_at else 0.0
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.tokens,
            seed=self.seed,
            time_to_first_token_s=(self.first_token_at - self.started) if self.first_token_at else None,
            tokens_per_s=(self.tokens / decode_s) if decode_s > 0 and self.tokens else None,
            dropped_messages=self.dropped_messages,
        )


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
    """Images as uint8 arrays (N, H, W, C), with what identifies the weights that made them.

    `details` is what a prompted plugin adds about how it ran (the scheduler's full name, the LoRAs
    with their file hashes, the dtype …): plain JSON data the image service records with the image."""

    pixels: Any  # numpy.ndarray, uint8, (N, H, W, C)
    weights_hash: str
    details: dict[str, Any] = field(default_factory=dict)
    stats: ImageStats | None = None  # set by the contract (`ImageGenerator`'s public calls)


@dataclass(frozen=True)
class ImageStats:
    """What one image call took, measured by the contract the same way for every plugin: `seconds` from the
    call to its result (a wait for the compute lane included, as a text stream's time to first token
    includes it), the pictures returned and the denoising steps reported to its `StepControl` (0 for a
    one-shot model such as a GAN)."""

    seconds: float
    images: int
    steps: int = 0

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    @property
    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


# ---------------------------------------------------------------- prompted images


class LoraWeight(StrictModel):
    """One LoRA file (by the name the plugin lists) applied with a weight."""

    name: str = Field(..., min_length=1, max_length=200)
    weight: float = Field(1.0, ge=-4.0, le=4.0, description="0 = off, 1 = as trained, negative = away from it")


class PromptParams(StrictModel):
    """Per-request settings of a prompted image plugin (`paint`). Plugins may subclass it to change
    defaults or bounds; the scheduler name is checked against the plugin's `schedulers()`."""

    prompt: str = Field("", max_length=4000)
    negative_prompt: str = Field("", max_length=4000, description="what to steer away from")
    width: int = Field(512, ge=16, le=4096, multiple_of=8, description="pixels, a multiple of 8")
    height: int = Field(512, ge=16, le=4096, multiple_of=8, description="pixels, a multiple of 8")
    steps: int = Field(25, ge=1, le=150, description="denoising steps")
    guidance: float = Field(7.0, ge=0.0, le=30.0, description="classifier-free guidance (CFG) scale; ≤ 1 = off")
    strength: float = Field(0.75, gt=0.0, le=1.0, description="image-to-image / inpaint: how much of the init image is redrawn")
    scheduler: str = Field("euler", min_length=1, max_length=40)
    loras: tuple[LoraWeight, ...] = Field((), max_length=8)


PaintMode = Literal["text-to-image", "image-to-image", "inpaint"]


@dataclass(frozen=True)
class PaintRequest:
    """A prompted image request: `count` images from seeds seed, seed+1, … (the studio's batch rule).

    `init_image` is (H, W, 3) uint8 RGB at the requested size, `mask` (H, W) uint8 where non-zero
    means "repaint here". Both stay on the request so the service can hand the init image on (as the
    ingredient of a provenance manifest, say) and record what the image was made from.
    """

    params: PromptParams
    seed: int
    count: int = 1
    init_image: Any = None  # numpy uint8 (H, W, 3) or None
    mask: Any = None  # numpy uint8 (H, W) or None

    def __post_init__(self) -> None:
        if not 0 <= self.seed <= 2**32 - 1:
            raise InvalidOptionsError(f"seed: must be from 0 to {2**32 - 1}; got {self.seed}.")
        if self.count < 1:
            raise InvalidOptionsError("count: ask for at least one image.")
        if self.mask is not None and self.init_image is None:
            raise InvalidOptionsError("mask: inpainting needs an init image to repaint.")
        want = (self.params.height, self.params.width)
        if self.init_image is not None:
            shape = getattr(self.init_image, "shape", None)
            if shape is None or len(shape) != 3 or shape[2] != 3:
                raise InvalidOptionsError(f"init_image: expected an RGB image (H, W, 3); got shape {shape}.")
            if tuple(shape[:2]) != want:
                raise InvalidOptionsError(f"init_image: it is {shape[1]}×{shape[0]} but the request is "
                                          f"{want[1]}×{want[0]}; resize it or change width/height.")
        if self.mask is not None:
            shape = getattr(self.mask, "shape", None)
            if shape is None or tuple(shape) != want:
                got = "not an image" if shape is None else f"{shape[1]}×{shape[0]}" if len(shape) >= 2 else str(shape)
                raise InvalidOptionsError(f"mask: it must be a one-channel {want[1]}×{want[0]} image like the init "
                                          f"image; got {got}.")

    @property
    def mode(self) -> PaintMode:
        if self.mask is not None:
            return "inpaint"
        return "image-to-image" if self.init_image is not None else "text-to-image"

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + i) % 2**32 for i in range(self.count)]


@dataclass(frozen=True)
class StepEvent:
    """Step `step` of `total` (1-based) has finished; `preview` is an approximate (N, h, w, 3) uint8
    picture of the images so far on the steps a preview was asked for, else None."""

    step: int
    total: int
    preview: Any = None


StepCallback = Callable[[StepEvent], None]


@dataclass
class StepControl:
    """What a stepping plugin reports to between steps: progress, a preview now and then, cancel.

    A plugin calls `step(i, total, make_preview)` after each step; `make_preview` is only called on
    the steps a preview is due (every `preview_every` steps and the last), so a cheap decode stays
    cheap. A set `cancel` event raises `GenerationCancelledError` there: the plugin returns nothing.
    """

    on_step: StepCallback | None = None
    cancel: threading.Event | None = None
    preview_every: int = 5  # 0 = never
    steps_done: int = field(default=0, init=False)  # steps reported so far (the contract's step count)

    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def check(self) -> None:
        if self.cancelled():
            raise GenerationCancelledError("Stopped between two steps; nothing was saved.")

    def step(self, step: int, total: int, make_preview: Callable[[], Any] | None = None) -> None:
        self.check()
        if self.on_step is not None:
            due = make_preview is not None and self.preview_every > 0 and (
                step % self.preview_every == 0 or step == total)
            self.on_step(StepEvent(step, total, make_preview() if due else None))
        self.steps_done += 1
        self.check()


# ---------------------------------------------------------------- plugin base


class Generator(ABC):
    """Base class of every plugin: lifecycle, locking and option validation.

    Subclasses set `info`, implement `_load`/`_unload` and the inner calls of their modality
    (`_stream_chunks` for text; `_sample`, `_paint` … for images): the public calls around them are the
    contract's, which owns timing, stats and cancel.
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

    def check_options(self) -> None:
        """Raise LoadFailedError (saying why and what to pick instead) when these load options cannot
        work on this machine (device=cuda without a GPU, a quantizer whose package or kernel is missing),
        without loading anything. The registry calls it before it swaps a working model for new options."""
        return None

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
    """A text plugin streams chunks; `generate` is the stream joined.

    A plugin implements `_stream_chunks`, the inner generator: it reports to the `StreamClock` it is
    given and ends with a chunk that has a `finish_reason`; `stream` (the template) refuses an unloaded
    model, times the call and puts the stats on that last chunk."""

    def stream(self, request: TextRequest, cancel: threading.Event | None = None) -> Iterator[TextChunk]:
        if not self.loaded:
            raise LoadFailedError(f"Model {self.name!r} is not loaded.")
        self.check_request(request)
        clock = StreamClock()
        chunks = self._stream_chunks(request, cancel, clock)
        try:
            for chunk in chunks:
                if chunk.finish_reason is not None and chunk.stats is None:
                    chunk = replace(chunk, stats=clock.stats())
                yield chunk
        finally:
            close = getattr(chunks, "close", None)  # a reader that stops early frees what the plugin holds
            if close is not None:
                close()

    def _stream_chunks(self, request: TextRequest, cancel: threading.Event | None,
                       clock: StreamClock) -> Iterator[TextChunk]:
        """The plugin's decoding: text chunks as they are produced, the last with its `finish_reason`;
        `clock.begin(...)` once the prompt is encoded and `clock.token()` per sampled token."""
        raise NotImplementedError(f"The {self.info.plugin} plugin implements neither _stream_chunks nor stream.")

    def generate(self, request: TextRequest, cancel: threading.Event | None = None) -> tuple[str, TextChunk]:
        parts: list[str] = []
        last = TextChunk("")
        for chunk in self.stream(request, cancel):
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    @property
    def vocabulary_size(self) -> int | None:
        """How many token ids the model has (ids 0 … size-1), where it knows (a plugin with a tokenizer, once
        loaded); None: unknown (not loaded, or a remote server that checks them itself)."""
        return None

    def check_request(self, request: TextRequest) -> None:
        """Refuse what this model cannot do before any work starts: a `logit_bias` on a plugin that does not
        declare CAP_LOGIT_BIAS, or one naming token ids outside its vocabulary (where it is known)."""
        bias = request.params.logit_bias
        if not bias:
            return
        if CAP_LOGIT_BIAS not in self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} cannot apply logit_bias (its {self.info.plugin} plugin does not "
                                      "bias tokens); leave 'logit_bias' unset for it.", "logit_bias")
        size = self.vocabulary_size
        outside = sorted(t for t in bias if size is not None and t >= size)
        if outside:
            raise InvalidOptionsError(f"Invalid key in 'logit_bias': {outside[0]} is not a token id of {self.name}, "
                                      f"whose vocabulary has the ids 0 to {size - 1}.", "logit_bias")

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

    def render_prompt(self, request: TextRequest) -> RenderedPrompt:
        """Exactly the text the model reads for `request` (after its template, with the oldest messages left
        out where they do not fit) and its token count. Plugins with a tokenizer override it."""
        if request.prompt is not None:
            text = request.prompt
        elif request.continue_turn:
            *before, last = request.messages
            text = "".join(f"{m.role.capitalize()}: {m.content}\n" for m in before) + f"Assistant: {last.content}"
        else:
            text = "".join(f"{m.role.capitalize()}: {m.content}\n" for m in request.messages) + "Assistant:"
        return RenderedPrompt(text, self.count_tokens(text))

    def supports_chat(self) -> bool:
        """Whether role-tagged messages work well (an instruct model with a chat template);
        False means plain text continuation (`TextRequest(prompt=...)`) suits it better."""
        return CAP_CHAT in self.info.capabilities


class ImageGenerator(Generator):
    """An image plugin. Two kinds of request, chosen by the declared capabilities:

    - `class-conditional`: `sample(ends, params)` draws (class, seed) ends; optional latent walks
      (`interpolate`), reconstruction (`reconstruct`) and a denoising `trajectory`. `params` is a
      validated instance of `info.params`.
    - `text-to-image` / `image-to-image` / `inpaint`: `paint(request, control)` makes images from a
      prompt (and an init image / mask); `params` of the request is an instance of `info.params`
      (a `PromptParams`).

    The public calls are template methods: they refuse a call the plugin does not declare, check that
    the model is loaded, stop when the `StepControl`'s cancel is already set, run the plugin's inner
    method (`_sample`, `_paint`, `_trajectory`, `_interpolate`, `_reconstruct`) on the compute lane and
    put `ImageStats` on its output. A plugin that declares `steps` reports each step to the control it
    is handed (always one: progress, preview, cancel between two steps).

    Same weights, params and seeds give the same pixels on CPU, whatever the batch size.
    """

    @property
    def class_names(self) -> list[str]:
        """Class names, known without loading the weights (none for a prompted plugin)."""
        return []

    @property
    def image_size(self) -> tuple[int, int, int]:
        """(height, width, channels) of a default image."""
        return 512, 512, 3

    @property
    def weights_hash(self) -> str:
        """What identifies the exact weights (recorded with every image); '' when the plugin cannot tell."""
        return ""

    def schedulers(self) -> list[str]:
        """Scheduler (sampler) names `PromptParams.scheduler` accepts, the default first."""
        return []

    def loras(self) -> list[str]:
        """LoRA names `PromptParams.loras` may use with this model."""
        return []

    def defaults(self) -> dict[str, Any]:
        """Recommended request settings for this model (the UI's starting values); {} = those of `info.params`."""
        return {}

    def guess_label(self, pixels: Any) -> int | None:
        """The class an image (H, W, C uint8 at `image_size`) looks like, or None when the plugin cannot tell."""
        return None

    def check_paint(self, request: PaintRequest) -> None:
        """Refuse what this plugin cannot do before any work starts: a mode it does not declare, an
        unknown scheduler or LoRA. Plugins extend it (size limits, memory)."""
        caps = self.info.capabilities
        if request.mode not in caps:
            can = ", ".join(sorted(c for c in caps if c in PROMPTED_CAPABILITIES)) or "nothing from a prompt"
            raise InvalidOptionsError(f"{self.name} cannot do {request.mode}; it can do: {can}.")
        names = self.schedulers()
        if names and request.params.scheduler not in names:
            raise InvalidOptionsError(f"scheduler: {request.params.scheduler!r} is not one of {', '.join(names)}.")
        known = self.loras()
        for lora in request.params.loras:
            if CAP_LORA not in caps:
                raise InvalidOptionsError(f"loras: {self.name} does not take LoRA files.")
            if lora.name not in known:
                raise InvalidOptionsError(f"loras: no LoRA named {lora.name!r} for {self.name} "
                                          f"(available: {', '.join(known) or 'none'}).")

    # -- the public calls (template methods)
    def sample(self, ends: Sequence[ImageEnd], params: BaseModel, control: StepControl | None = None) -> ImageOutput:
        """Image i of class ends[i].label from the noise of ends[i].seed."""
        if CAP_CLASS_CONDITIONAL not in self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} does not draw images by class; give it a prompt instead.")
        return self._call(control, lambda c: self._sample(ends, params, c))

    def paint(self, request: PaintRequest, control: StepControl | None = None) -> ImageOutput:
        """Images from a prompt (text-to-image), an init image (image-to-image) or an image and a mask (inpaint)."""
        if not PROMPTED_CAPABILITIES & self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} does not make images from a prompt; pick a class and a seed instead.")
        return self._call(control, lambda c: self._paint(request, c), lambda: self.check_paint(request))

    def trajectory(self, end: ImageEnd, params: BaseModel, at_steps: Sequence[int],
                   control: StepControl | None = None) -> ImageOutput:
        """One image's denoising path: x_t after each of `at_steps` steps, then the model's estimate of the
        clean image at those steps (2 × len(at_steps) images; `details["steps"]` lists the steps)."""
        if CAP_TRAJECTORY not in self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} has no denoising trajectory; pick a diffusion model.")
        return self._call(control, lambda c: self._trajectory(end, params, at_steps, c))

    def interpolate(self, start: ImageEnd, end: ImageEnd, frames: int, params: BaseModel) -> ImageOutput:
        """`frames` images walking from `start` to `end`."""
        if CAP_INTERPOLATE not in self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} cannot interpolate between images.")
        return self._call(None, lambda _c: self._interpolate(start, end, frames, params))

    def reconstruct(self, pixels: Any, label: int, targets: Sequence[int]) -> ImageOutput:
        """Encode `pixels` (H, W, C uint8, already at `image_size`) as class `label`, decode as each target."""
        if CAP_RECONSTRUCT not in self.info.capabilities:
            raise InvalidOptionsError(f"{self.name} cannot reconstruct images.")
        return self._call(None, lambda _c: self._reconstruct(pixels, label, targets))

    def _call(self, control: StepControl | None, run: Callable[[StepControl], ImageOutput],
              check: Callable[[], None] | None = None) -> ImageOutput:
        """The bookkeeping of every public call: loaded?, the request's own checks, cancel before the first
        step, the plugin's work on the compute lane, then the stats."""
        control = control if control is not None else StepControl()
        started, steps_before = time.perf_counter(), control.steps_done

        def job() -> ImageOutput:
            if not self.loaded:
                raise LoadFailedError(f"{self.name} is not loaded.")
            if check is not None:
                check()
            control.check()
            return run(control)

        out = lane().call(job)
        if out.stats is None:
            out = replace(out, stats=ImageStats(time.perf_counter() - started, len(out.pixels),
                                                control.steps_done - steps_before))
        return out

    # -- what a plugin implements (the ones its capabilities declare)
    def _sample(self, ends: Sequence[ImageEnd], params: BaseModel, control: StepControl) -> ImageOutput:
        raise NotImplementedError(f"The {self.info.plugin} plugin declares {CAP_CLASS_CONDITIONAL} but has no _sample.")

    def _paint(self, request: PaintRequest, control: StepControl) -> ImageOutput:
        raise NotImplementedError(f"The {self.info.plugin} plugin declares {request.mode} but has no _paint.")

    def _trajectory(self, end: ImageEnd, params: BaseModel, at_steps: Sequence[int],
                    control: StepControl) -> ImageOutput:
        raise NotImplementedError(f"The {self.info.plugin} plugin declares {CAP_TRAJECTORY} but has no _trajectory.")

    def _interpolate(self, start: ImageEnd, end: ImageEnd, frames: int, params: BaseModel) -> ImageOutput:
        raise NotImplementedError(f"The {self.info.plugin} plugin declares {CAP_INTERPOLATE} but has no _interpolate.")

    def _reconstruct(self, pixels: Any, label: int, targets: Sequence[int]) -> ImageOutput:
        raise NotImplementedError(f"The {self.info.plugin} plugin declares {CAP_RECONSTRUCT} but has no _reconstruct.")


def release_accelerator_memory() -> None:
    """Give cached accelerator memory back after an unload (no-op without torch/CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
