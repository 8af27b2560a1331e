"""What a story continuation sends to the model: pure functions, no database, no Gradio.

    assembled = assemble_context(passages, Levers(memory=..., authors_note=...), budget, count)
    request = to_request(assembled, instruct=True, params=params)

The context is built the way KoboldAI does it, from the top:

    [Premise: …]                 always kept
    memory                       always kept (characters, setting)
    world info entries           only those whose keyword is in the recent story text
    story text … newest          the oldest lines are cut first when the budget is short
    [Author's note: …]           inserted `an_depth` paragraphs before the end

Token counts are taken line by line through a `count` function; `TokenCountCache` makes
unchanged lines free, so a long story is not re-tokenized on every Continue.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from generators.base import ChatMessage, InvalidOptionsError, SamplingParams, TextRequest

CountFn = Callable[[str], int]

MAX_DEPTH = 100  # author's note depth and world-info scan depth, in paragraphs
MIN_STORY_TOKENS = 32  # below this much room for story text, a continuation makes no sense
TEMPLATE_MARGIN = 16  # tokens a chat template adds around the messages (role markers …)
CONTINUE_SYSTEM_PROMPT = (
    "You are a skilled fiction writer co-writing a story with the user. Continue the story exactly "
    "where the text stops, in the same style, tense and point of view. Write only the next part of "
    "the story: no title, no comments, no summary, no questions."
)
# The user's turn when the story itself is the start of the model's turn.
STORY_REQUEST = "Write the story."


# ------------------------------------------------------------------ levers


@dataclass(frozen=True)
class WorldEntry:
    """Lore that joins the context only when one of its keywords appears in the recent text."""

    keys: tuple[str, ...]
    text: str

    def trigger(self, text: str) -> str | None:
        """The first keyword found in `text` (case-insensitive, whole words), or None."""
        for key in self.keys:
            key = key.strip()
            if key and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text, re.IGNORECASE):
                return key
        return None

    @property
    def label(self) -> str:
        return ", ".join(k for k in self.keys if k.strip()) or "(no keywords)"


@dataclass(frozen=True)
class Levers:
    premise: str = ""
    memory: str = ""
    authors_note: str = ""
    an_depth: int = 3  # paragraphs before the end; 0 = after the last one
    world_info: tuple[WorldEntry, ...] = ()
    scan_depth: int = 10  # recent paragraphs searched for world-info keywords

    def validate(self) -> None:
        if not 0 <= self.an_depth <= MAX_DEPTH:
            raise InvalidOptionsError(
                f"The author's note depth must be between 0 and {MAX_DEPTH} paragraphs, not {self.an_depth}."
            )
        if not 1 <= self.scan_depth <= MAX_DEPTH:
            raise InvalidOptionsError(
                f"The world-info scan depth must be between 1 and {MAX_DEPTH} paragraphs, not {self.scan_depth}."
            )


# ------------------------------------------------------------------ result


@dataclass(frozen=True)
class Part:
    """One piece of the context as sent, with its token count."""

    kind: str  # premise | memory | world_info | story | authors_note
    label: str
    text: str
    tokens: int


@dataclass(frozen=True)
class Cut:
    """Something left out to fit the budget (tokens None when it was never counted)."""

    kind: str
    label: str
    chars: int
    tokens: int | None = None


@dataclass(frozen=True)
class AssembledContext:
    header: tuple[Part, ...]  # premise, memory, world info
    body: tuple[Part, ...]  # the story's newest text, with the author's note inside
    cut: tuple[Cut, ...]
    budget: int

    @property
    def parts(self) -> tuple[Part, ...]:
        return self.header + self.body

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.parts)

    @property
    def header_text(self) -> str:
        return "".join(p.text for p in self.header)

    @property
    def body_text(self) -> str:
        return "".join(p.text for p in self.body)

    @property
    def prompt_text(self) -> str:
        return self.header_text + self.body_text


# ------------------------------------------------------------------ token counts


class TokenCountCache:
    """LRU of token counts keyed by (model, text hash): unchanged lines are never re-tokenized.

    One instance lives on the AppContext (no module globals); thread-safe.
    """

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self._counts: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def count(self, model: str, text: str, counter: CountFn) -> int:
        if not text:
            return 0
        key = (model, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest())
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                self.hits += 1
                return self._counts[key]
        n = counter(text)  # outside the lock: tokenizing can be slow
        with self._lock:
            self.misses += 1
            self._counts[key] = n
            while len(self._counts) > self.maxsize:
                self._counts.popitem(last=False)
        return n

    def counter(self, model: str, counter: CountFn) -> CountFn:
        """`count` bound to one model: what assemble_context takes."""
        return lambda text: self.count(model, text, counter)

    def __len__(self) -> int:
        return len(self._counts)


# ------------------------------------------------------------------ assembly


def _is_paragraph(line: str) -> bool:
    return bool(line.strip())


def _fit_tail(line: str, room: int, count: CountFn) -> str:
    """The longest ending of `line`, cut at a word boundary, that fits in `room` tokens."""
    starts = [0] + [m.end() for m in re.finditer(r"\s+", line)]
    lo, hi = 0, len(starts)  # find the smallest start index whose tail fits
    while lo < hi:
        mid = (lo + hi) // 2
        if count(line[starts[mid]:]) <= room:
            hi = mid
        else:
            lo = mid + 1
    return line[starts[lo]:] if lo < len(starts) else ""


def assemble_context(
    passages: Sequence[str],
    levers: Levers,
    budget: int,
    count: CountFn,
    *,
    min_story_tokens: int = MIN_STORY_TOKENS,
) -> AssembledContext:
    """Build the context for the next continuation within `budget` tokens (raises
    InvalidOptionsError with a readable message when it cannot)."""
    levers.validate()
    story = "".join(passages)
    if not story.strip():
        raise InvalidOptionsError("The story is empty: write its opening lines first, then press Continue.")
    if budget < min_story_tokens:
        raise InvalidOptionsError(
            f"Only {max(budget, 0)} tokens of the context window are left for the prompt; lower max new tokens."
        )

    header: list[Part] = []
    for kind, label, text in (
        ("premise", "Premise", f"[Premise: {levers.premise.strip()}]\n" if levers.premise.strip() else ""),
        ("memory", "Memory", levers.memory.strip() + "\n" if levers.memory.strip() else ""),
    ):
        if text:
            header.append(Part(kind, label, text, count(text)))
    note = levers.authors_note.strip()
    an_text = f"[Author's note: {note}]\n" if note else ""
    an_tokens = count(an_text) if an_text else 0
    fixed = sum(p.tokens for p in header) + an_tokens
    if budget - fixed < min_story_tokens:
        raise InvalidOptionsError(
            f"The premise, memory and author's note take {fixed:,} tokens, which leaves "
            f"{max(budget - fixed, 0):,} of the {budget:,} available for the story itself. "
            "Shorten the memory or the author's note, or lower max new tokens."
        )

    lines = story.splitlines(keepends=True)
    paragraphs = [i for i, line in enumerate(lines) if _is_paragraph(line)]
    cut: list[Cut] = []

    # World info: entries triggered by the last `scan_depth` paragraphs, in the writer's order,
    # up to half of what is left after the fixed parts (the story needs room too).
    scan_from = paragraphs[-levers.scan_depth] if len(paragraphs) >= levers.scan_depth else 0
    recent = "".join(lines[scan_from:])
    wi_room = (budget - fixed) // 2
    wi_used = 0
    for entry in levers.world_info:
        if not entry.text.strip():
            continue
        key = entry.trigger(recent)
        if key is None:
            continue
        text = entry.text.strip() + "\n"
        tokens = count(text)
        if wi_used + tokens > wi_room:
            cut.append(Cut("world_info", f"World info [{entry.label}]", len(text), tokens))
            continue
        wi_used += tokens
        header.append(Part("world_info", f"World info [{key}]", text, tokens))

    # Story: newest lines first while they fit; the line that does not fit is cut at a word.
    room = budget - fixed - wi_used
    kept: list[tuple[int, str, int]] = []  # (line index, text, tokens), newest first
    used = 0
    n_old = 0  # how many of the oldest lines are left out entirely
    for i in range(len(lines) - 1, -1, -1):
        tokens = count(lines[i])
        if used + tokens <= room:
            kept.append((i, lines[i], tokens))
            used += tokens
            continue
        tail = _fit_tail(lines[i], room - used, count)
        n_old = i
        if tail:
            kept.append((i, tail, count(tail)))
            used += kept[-1][2]
            cut.append(Cut("story", f"Story: start of line {i + 1}", len(lines[i]) - len(tail)))
        else:
            n_old = i + 1
        break
    if n_old:
        label = "Story: line 1 (the oldest)" if n_old == 1 else f"Story: lines 1–{n_old} (the oldest)"
        cut.append(Cut("story", label, sum(len(x) for x in lines[:n_old])))
    kept.reverse()

    # Author's note: before the `an_depth`-th paragraph from the end (at the top if fewer kept).
    an_at = len(kept)
    if an_text:
        seen = 0
        if levers.an_depth > 0:
            an_at = 0
            for pos in range(len(kept) - 1, -1, -1):
                if _is_paragraph(kept[pos][1]):
                    seen += 1
                    if seen == levers.an_depth:
                        an_at = pos
                        break
        if an_at == len(kept) and kept and not kept[-1][1].endswith("\n"):
            an_text = "\n" + an_text  # never glue the note onto the last sentence
            an_tokens = count(an_text)

    body: list[Part] = []

    def story_part(chunk: list[tuple[int, str, int]]) -> None:
        if chunk:
            first, last = chunk[0][0] + 1, chunk[-1][0] + 1
            label = f"Story (line {first})" if first == last else f"Story (lines {first}–{last})"
            body.append(Part("story", label, "".join(c[1] for c in chunk), sum(c[2] for c in chunk)))

    story_part(kept[:an_at])
    if an_text:
        body.append(Part("authors_note", f"Author's note (depth {levers.an_depth})", an_text, an_tokens))
    story_part(kept[an_at:])
    return AssembledContext(tuple(header), tuple(body), tuple(cut), budget)


def reserved_tokens(instruct: bool, count: CountFn) -> int:
    """Tokens the request wrapper itself takes (system prompt, the user's turn and template, or a BOS token)."""
    return count(CONTINUE_SYSTEM_PROMPT) + count(STORY_REQUEST) + TEMPLATE_MARGIN if instruct else 2


def to_request(assembled: AssembledContext, instruct: bool, params: SamplingParams,
               continue_turn: bool = False) -> TextRequest:
    """Instruct models get a system prompt for continuing prose (with the premise, memory and world info);
    base models get the plain text to continue.

    With `continue_turn` (plugins that can leave the model's turn open) the story so far is the start of the
    model's own turn, so it writes on in the same voice; otherwise the story is the user's turn, which an
    instruct model tends to answer ("Here's an edited version…") instead of continuing
    (benchmarks/bench_output_quality.py measures both)."""
    if not instruct:
        return TextRequest(prompt=assembled.prompt_text, params=params)
    system = CONTINUE_SYSTEM_PROMPT
    if assembled.header:
        system += "\n\nWhat you know about this story:\n" + assembled.header_text.rstrip("\n")
    if continue_turn:
        messages = (ChatMessage("system", system), ChatMessage("user", STORY_REQUEST),
                    ChatMessage("assistant", assembled.body_text))
        return TextRequest(messages=messages, params=params, continue_turn=True)
    messages = (ChatMessage("system", system), ChatMessage("user", assembled.body_text))
    return TextRequest(messages=messages, params=params)


@dataclass(frozen=True)
class ContextReport:
    """What the inspector shows: every part with its tokens, what was cut, the exact request."""

    mode: str  # instruct | completion
    model: str
    budget: int
    context_window: int
    max_new_tokens: int
    parts: list[dict[str, Any]] = field(default_factory=list)
    cut: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, str]] = field(default_factory=list)  # [{"role", "content"}] or [{"role": "prompt", ...}]

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "budget": self.budget,
            "context_window": self.context_window,
            "max_new_tokens": self.max_new_tokens,
            "tokens": sum(p["tokens"] for p in self.parts),
            "parts": self.parts,
            "cut": self.cut,
            "sent": self.sent,
        }


def report(assembled: AssembledContext, request: TextRequest, *, model: str, context_window: int) -> ContextReport:
    sent = (
        [{"role": "prompt", "content": request.prompt}]
        if request.prompt is not None
        else [{"role": m.role, "content": m.content} for m in request.messages]
    )
    return ContextReport(
        mode="completion" if request.prompt is not None else "instruct",
        model=model,
        budget=assembled.budget,
        context_window=context_window,
        max_new_tokens=request.params.max_new_tokens,
        parts=[{"kind": p.kind, "label": p.label, "tokens": p.tokens, "chars": len(p.text)} for p in assembled.parts],
        cut=[{"kind": c.kind, "label": c.label, "chars": c.chars, "tokens": c.tokens} for c in assembled.cut],
        sent=sent,
    )
