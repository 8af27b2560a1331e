"""A character-level LSTM language model and its text plugin (entry point ``char-lstm``).

The network (:class:`CharLSTMConfig`, ``CharLSTMNet``) is an embedding, a stack of LSTM layers
with dropout between them and a linear read-out (optionally tied to the embedding). An
exported model is a folder with ``model.safetensors`` (the weights) and ``config.json`` (the
vocabulary as a list of characters, the architecture and how it was trained); see
:func:`save_char_lstm` / :func:`load_char_lstm`, and ``generators.text.train_rnn`` to train one.

The plugin continues raw text (``TextRequest(prompt=...)``) one character at a time: it cannot
chat. Importing this module does not import torch; ``CharLSTMNet`` is built on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import secrets
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..base import (
    CAP_CANCEL,
    CAP_COMPLETION,
    CAP_LOGIT_BIAS,
    CAP_SEED,
    CAP_STREAM,
    GenerationFailedError,
    GeneratorInfo,
    InvalidOptionsError,
    LoadFailedError,
    ProgressFn,
    SamplingParams,
    StreamClock,
    StrictModel,
    TextChunk,
    TextGenerator,
    TextRequest,
)
from ..compute import lane
from .decoding import StopStringFilter
from .logits_processing import DryPenalty, ExcludeTopChoices

log = logging.getLogger(__name__)

FORMAT = "aigc-studio-char-lstm"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BUILTIN_PREFIX = "builtin:"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = "builtin:lstm-fortunes"
CONTEXT_WINDOW = 100_000  # the LSTM state carries any length; this only bounds what callers send
PRIME_CHUNK = 4096  # prompt characters per forward pass while priming the state
REPETITION_WINDOW = 64  # repetition_penalty applies to the characters among the last this many

# Typographic characters a prompt may hold that a plain-ASCII vocabulary spells differently.
_ASCII_FALLBACK = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "--",
    "\u2026": "...", "\u00a0": " ", "\r": "",
}  # fmt: skip


# ---------------------------------------------------------------- the network


@dataclass(frozen=True)
class CharLSTMConfig:
    """Architecture of a :class:`CharLSTMNet` (the vocabulary is stored beside it)."""

    vocab_size: int
    embed_dim: int = 64
    hidden: int = 384
    layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = False  # read-out shares the embedding matrix (needs embed_dim == hidden)

    def __post_init__(self) -> None:
        if self.vocab_size < 2 or self.embed_dim < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"invalid char-LSTM config {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embed_dim != self.hidden:
            raise ValueError(f"tie_weights needs embed_dim == hidden, got {self.embed_dim} and {self.hidden}")


@functools.cache
def _network_class() -> type:
    import torch
    from torch import nn

    class CharLSTMNet(nn.Module):
        """Embedding → LSTM × layers (dropout between and after) → linear read-out.

        ``forward(ids (B, T), state)`` returns logits (B, T, V) and the new ``(h, c)`` state,
        each (layers, B, hidden); ``state=None`` starts from zeros.
        """

        def __init__(self, config: CharLSTMConfig) -> None:
            super().__init__()
            self.config = config
            self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
            self.lstm = nn.LSTM(config.embed_dim, config.hidden, config.layers, batch_first=True,
                                dropout=config.dropout if config.layers > 1 else 0.0)
            self.drop = nn.Dropout(config.dropout)
            self.head = nn.Linear(config.hidden, config.vocab_size)
            if config.tie_weights:
                self.head.weight = self.embedding.weight
            with torch.no_grad():  # forget-gate bias 1: remembers by default early in training
                for name, param in self.lstm.named_parameters():
                    if name.startswith("bias_ih"):
                        param[config.hidden:2 * config.hidden].fill_(1.0)
                    elif name.startswith("bias_hh"):
                        param[config.hidden:2 * config.hidden].zero_()

        def forward(self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            x = self.drop(self.embedding(ids))
            out, state = self.lstm(x, state)
            return self.head(self.drop(out)), state

    CharLSTMNet.__module__ = __name__
    return CharLSTMNet


def __getattr__(name: str) -> Any:  # `from generators.text.char_lstm import CharLSTMNet` imports torch then
    if name == "CharLSTMNet":
        return _network_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_network(config: CharLSTMConfig) -> Any:
    """A freshly initialised ``CharLSTMNet`` (uses the global torch RNG)."""
    return _network_class()(config)


# ---------------------------------------------------------------- save / load


@dataclass
class LoadedCharLSTM:
    model: Any  # CharLSTMNet, eval mode
    vocab: list[str]
    training: dict[str, Any] = field(default_factory=dict)


def check_vocab(vocab: Sequence[str]) -> list[str]:
    vocab = list(vocab)
    if any(not isinstance(ch, str) or len(ch) != 1 for ch in vocab) or len(set(vocab)) != len(vocab):
        raise ValueError("the vocabulary must be a list of distinct single characters")
    return vocab


def save_char_lstm(out_dir: str | os.PathLike, model: Any, vocab: Sequence[str],
                   training: dict[str, Any] | None = None, dtype: Any = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir``; returns the folder. ``dtype``
    (e.g. torch.float16) stores the weights smaller; loading casts them back to float32."""
    from safetensors.torch import save_file

    vocab = check_vocab(vocab)
    if len(vocab) != model.config.vocab_size:
        raise ValueError(f"{len(vocab)} characters for a model with vocab_size {model.config.vocab_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if model.config.tie_weights:
        state.pop("head.weight")  # the same tensor as embedding.weight
    tensors = {k: v.detach().cpu().to(dtype or v.dtype).contiguous() for k, v in state.items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vocab": vocab,
        "config": dataclasses.asdict(model.config),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "training": training or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; expected an exported char-LSTM folder")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an {FORMAT} config (format={meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {meta['format_version']}; this code reads {FORMAT_VERSION}")
    return meta


def load_char_lstm(folder: str | os.PathLike, device: Any = "cpu") -> LoadedCharLSTM:
    """Rebuild the network from ``config.json`` and load ``model.safetensors``; returned in eval mode."""
    from safetensors.torch import load_file

    meta = read_meta(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; expected an exported char-LSTM folder")
    config = CharLSTMConfig(**meta["config"])
    vocab = check_vocab(meta["vocab"])
    if len(vocab) != config.vocab_size:
        raise ValueError(f"{folder}: {len(vocab)} characters for vocab_size {config.vocab_size}")
    model = build_network(config)
    tensors = load_file(weights)
    if config.tie_weights:
        tensors["head.weight"] = tensors["embedding.weight"]
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return LoadedCharLSTM(model, vocab, meta.get("training", {}))


def resolve_weights(source: str) -> Path:
    """``builtin:NAME`` → ``generators/text/weights/NAME``; anything else is a folder path."""
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        folder = WEIGHTS_DIR / name
        if not name or "/" in name or not (folder / CONFIG_FILE).is_file():
            shipped = sorted(p.name for p in WEIGHTS_DIR.iterdir() if p.is_dir()) if WEIGHTS_DIR.is_dir() else []
            raise LoadFailedError(f"No built-in char-LSTM weights named {name!r} (shipped: {', '.join(shipped) or 'none'}).")
        return folder
    folder = Path(source).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        raise LoadFailedError(f"{folder} is not an exported char-LSTM folder (config.json is missing).")
    return folder


# ---------------------------------------------------------------- sampling


def sample_next(logits: Any, params: SamplingParams, rng: Any, recent: Sequence[int] = (),
                breakers: Collection[int] = (), protected: Collection[int] = (), counts: Any = None) -> int:
    """The next character id from logits (V,) with the request's sampling parameters.

    ``params.logit_bias`` (character id → bias) is added to the logits first, as OpenAI adds it to the model's
    own. temperature 0 is greedy (argmax). Otherwise, in transformers' order: repetition penalty
    (on the ids in ``recent``), OpenAI's presence and frequency penalties (``counts``: how often each
    character was generated so far, (V,); the prompt does not count), DRY (on ``recent``; ``breakers``: the
    ids of its sequence breakers),
    temperature, top-k, top-p, typical-p, min-p, XTC (never removing a ``protected`` id), then one draw from ``rng`` (a CPU
    ``torch.Generator``), so a seed gives the same characters on any device.
    """
    import torch

    scores = logits.detach().float().cpu().clone()
    if params.logit_bias:
        biased = sorted(params.logit_bias)
        scores[biased] += torch.tensor([params.logit_bias[t] for t in biased])
    if params.repetition_penalty != 1.0 and recent:
        idx = torch.tensor(sorted(set(recent)), dtype=torch.long)
        picked = scores[idx]
        scores[idx] = torch.where(picked < 0, picked * params.repetition_penalty, picked / params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and counts is not None:
        scores -= counts * params.frequency_penalty + (counts > 0).float() * params.presence_penalty
    if params.dry_multiplier > 0.0 and recent:
        dry = DryPenalty(params.dry_multiplier, params.dry_base, params.dry_allowed_length, breakers)
        scores = dry(torch.tensor([list(recent)]), scores[None])[0]
    if params.temperature == 0.0:
        return int(torch.argmax(scores).item())
    scores = scores / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if params.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        mass = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
        drop = mass - torch.softmax(ordered, dim=-1) >= params.top_p  # the mass before this one already suffices
        drop[0] = False  # the likeliest always stays (top_p = 0: only it)
        scores[order[drop]] = -math.inf
    if params.typical_p < 1.0:
        from transformers.generation.logits_process import TypicalLogitsWarper

        scores = TypicalLogitsWarper(params.typical_p)(None, scores[None])[0]
    probs = torch.softmax(scores, dim=-1)
    if params.min_p > 0.0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.xtc_probability > 0.0:
        kept = ExcludeTopChoices(params.xtc_threshold, params.xtc_probability, rng, protected)(None, probs.log()[None])[0]
        probs = torch.softmax(kept, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng).item())


# ---------------------------------------------------------------- the plugin


class CharLSTMLoadOptions(StrictModel):
    weights: str = Field(DEFAULT_WEIGHTS, description="exported char-LSTM folder, or builtin:NAME")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "cpu", description="cpu is fast enough for this small model and gives the same text for a seed everywhere"
    )


class CharLSTM(TextGenerator):
    """Continues text character by character with a small LSTM (e.g. the shipped fortunes model).

    Prompt characters that are not in the model's vocabulary are first mapped to a plain-ASCII
    spelling when there is one (curly quotes, dashes, ellipsis, no-break space) and otherwise
    **skipped**: the model has no unknown-character symbol. An empty prompt (or one with no
    known character) starts the text as if after a blank line; a prompt longer than the context
    window (100 000 characters) is primed with its end only. ``max_new_tokens`` counts
    characters; there is no end-of-text symbol, so a reply ends at a stop string or the limit.
    ``repetition_penalty`` penalises the characters among the last 64; ``presence_penalty`` and
    ``frequency_penalty`` the characters generated so far (OpenAI's formula). ``logit_bias`` names characters by
    their index in the vocabulary (the ``vocab`` list of the model's ``config.json``).
    """

    info = GeneratorInfo(
        plugin="char-lstm",
        modality="text",
        family="char-rnn",
        description="Character-level LSTM trained from scratch (text continuation only, no chat)",
        capabilities=frozenset({CAP_STREAM, CAP_COMPLETION, CAP_CANCEL, CAP_SEED, CAP_LOGIT_BIAS}),
        params=SamplingParams,
        load_options=CharLSTMLoadOptions,
    )
    options: CharLSTMLoadOptions

    def __init__(self, name: str, options: dict[str, Any] | None = None, *, cache_dir: str | None = None) -> None:
        super().__init__(name, options, cache_dir=cache_dir)
        self.model: Any = None
        self.vocab: list[str] = []
        self.training: dict[str, Any] = {}
        self.device = "cpu"
        self.loaded_from: Path | None = None
        self._index: dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle
    def _load(self, progress: ProgressFn) -> None:
        import torch

        folder = resolve_weights(self.options.weights)
        want = self.options.device
        if want == "cuda" and not torch.cuda.is_available():
            raise LoadFailedError("device=cuda was requested but PyTorch sees no CUDA GPU here. Pick device=auto or device=cpu.")
        self.device = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
        progress(f"Loading {self.name} weights on {self.device}…")
        try:
            loaded = load_char_lstm(folder, self.device)
        except (FileNotFoundError, ValueError) as exc:
            raise LoadFailedError(f"Could not load char-LSTM weights from {folder}: {exc}") from exc
        self.model, self.vocab, self.training = loaded.model, loaded.vocab, loaded.training
        self._index = {ch: i for i, ch in enumerate(self.vocab)}
        self.loaded_from = folder

    def _unload(self) -> None:
        self.model = None
        self._index = {}

    # ------------------------------------------------------------ info
    @property
    def context_window(self) -> int:
        return CONTEXT_WINDOW

    def supports_chat(self) -> bool:
        return False

    @property
    def vocabulary_size(self) -> int | None:
        """Its tokens are its characters: `logit_bias` names them by their index in the vocabulary."""
        return len(self.vocab) if self.loaded else None

    def count_tokens(self, text: str) -> int:
        return len(text)

    def memory_bytes(self) -> int:
        if self.model is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def estimated_memory_bytes(self) -> int:
        try:
            return (resolve_weights(self.options.weights) / WEIGHTS_FILE).stat().st_size
        except (LoadFailedError, OSError):
            return 0

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["device"] = self.device if self.loaded else None
        d["context_window"] = self.context_window
        d["vocab_size"] = len(self.vocab) if self.loaded else None
        return d

    # ------------------------------------------------------------ text ↔ ids
    def encode(self, text: str) -> list[int]:
        """Character ids of ``text``: typographic characters fall back to ASCII, unknown ones are skipped."""
        self._require_loaded()
        ids: list[int] = []
        for ch in text:
            if ch in self._index:
                ids.append(self._index[ch])
            else:
                ids.extend(self._index[c] for c in _ASCII_FALLBACK.get(ch, "") if c in self._index)
        return ids

    def _require_loaded(self) -> None:
        if not self.loaded or self.model is None:
            raise LoadFailedError(f"Model {self.name!r} is not loaded.")

    def _start_ids(self) -> list[int]:
        """What an empty prompt is primed with: a blank line (the separator between texts)."""
        ids = [self._index[c] for c in "\n\n" if c in self._index]
        return ids or [0]

    def log_likelihood(self, text: str, cancel: threading.Event | None = None) -> tuple[float, int]:
        """NLL (nats) of every known character of `text`, each given all before it (primed with the
        blank line that starts a text); characters outside the vocabulary are skipped."""
        import torch

        self._require_loaded()
        ids = self._start_ids() + self.encode(text)
        start = len(self._start_ids())
        if len(ids) <= start:
            raise InvalidOptionsError("The text has no characters this model knows.")
        model, device = self.model, self.device

        def score(chunk: list[int], state: Any, first: int) -> tuple[float, Any]:
            with torch.inference_mode():
                out, state = model(torch.tensor([chunk[:-1]], device=device), state)
                nll = torch.nn.functional.cross_entropy(out[0].float(), torch.tensor(chunk[1:], device=device),
                                                        reduction="none")
            return float(nll[first:].sum()), state

        total, state = 0.0, None
        for i in range(0, len(ids) - 1, PRIME_CHUNK):
            if cancel is not None and cancel.is_set():
                raise GenerationFailedError("Scoring was stopped.")
            first = max(0, start - 1 - i)  # the primer's own characters are not scored
            nll_sum, state = lane().call(score, ids[i:i + PRIME_CHUNK + 1], state, first)
            total += nll_sum
        return total, len(ids) - start

    # ------------------------------------------------------------ generation
    def _stream_chunks(self, request: TextRequest, cancel: threading.Event | None,
                       clock: StreamClock) -> Iterator[TextChunk]:
        if request.prompt is None:
            raise InvalidOptionsError(
                f"{self.name!r} (char-lstm) is a character-level continuation model and cannot chat; "
                "use it in the Story tab (a plain-text prompt to continue)."
            )
        self._require_loaded()
        yield from lane().iterate(self._decode(request, cancel, clock))

    def _decode(self, request: TextRequest, cancel: threading.Event | None, clock: StreamClock) -> Iterator[TextChunk]:
        """The decoding loop, advanced on the compute lane in time slices."""
        import torch

        params = request.params
        seed = params.seed if params.seed is not None else secrets.randbits(32)
        rng = torch.Generator(device="cpu").manual_seed(seed)
        stops = StopStringFilter(params.stop)
        prompt_ids = self.encode(request.prompt)[-CONTEXT_WINDOW:]  # like the transformers plugin, keep the end
        history = (prompt_ids or self._start_ids())[-REPETITION_WINDOW:]
        breakers = {self._index[b[-1]] for b in params.dry_sequence_breakers if b[-1] in self._index}
        newline = {self._index["\n"]} if "\n" in self._index else set()
        counts = torch.zeros(len(self.vocab))  # each character generated so far (OpenAI's penalties)
        model, device = self.model, self.device
        clock.begin(len(prompt_ids), seed)
        finish: Literal["stop", "length", "cancelled"] = "length"

        # Inference mode is entered per model call, never across a yield: between two items the lane runs other jobs.
        logits, state = None, None
        primer = prompt_ids or self._start_ids()
        for i in range(0, len(primer), PRIME_CHUNK):
            if cancel is not None and cancel.is_set():
                break
            with torch.inference_mode():
                out, state = model(torch.tensor([primer[i:i + PRIME_CHUNK]], device=device), state)
                logits = out[0, -1]
        token = -1
        for step in range(params.max_new_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            with torch.inference_mode():
                if step:
                    out, state = model(torch.tensor([[token]], device=device), state)
                    logits = out[0, -1]
                token = sample_next(logits, params, rng, history, breakers, newline, counts)
            history = (history + [token])[-REPETITION_WINDOW:]
            counts[token] += 1
            clock.token()
            text = stops.push(self.vocab[token])
            if text:
                yield TextChunk(text)
            if stops.stopped:
                finish = "stop"
                break
        tail = "" if stops.stopped else stops.flush()
        yield TextChunk(tail, finish_reason=finish)
