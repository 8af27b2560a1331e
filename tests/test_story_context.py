"""Context assembly for story continuations: each lever, their combinations, the budget."""

from __future__ import annotations

import pytest

from generators.base import InvalidOptionsError, SamplingParams
from webui.services.story_context import (
    CONTINUE_SYSTEM_PROMPT,
    Levers,
    TokenCountCache,
    WorldEntry,
    assemble_context,
    report,
    to_request,
)


def words(text: str) -> int:
    """A predictable tokenizer: one token per word."""
    return len(text.split())


def para(i: int, n: int = 5) -> str:
    return " ".join(f"p{i}w{j}" for j in range(n)) + "\n"


STORY = [para(i) for i in range(20)]  # 20 paragraphs of 5 "tokens"


def kinds(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.kind for p in ctx.parts]


def test_everything_fits_verbatim() -> None:
    ctx = assemble_context(STORY, Levers(), 1000, words, min_story_tokens=1)
    assert ctx.prompt_text == "".join(STORY) and ctx.cut == () and ctx.tokens == 100
    assert kinds(ctx) == ["story"] and ctx.body[0].label == "Story (lines 1–20)"


def test_memory_and_premise_on_top_always_kept() -> None:
    levers = Levers(premise="A heist in Venice", memory="Mara is a thief.\nLuca is her brother.")
    ctx = assemble_context(STORY, levers, 30, words, min_story_tokens=5)
    assert kinds(ctx)[:2] == ["premise", "memory"]
    assert ctx.prompt_text.startswith("[Premise: A heist in Venice]\nMara is a thief.\nLuca is her brother.\n")
    assert ctx.tokens <= 30 and ctx.body_text.endswith(STORY[-1])  # the newest text is kept


def test_oldest_story_is_cut_first_and_reported() -> None:
    ctx = assemble_context(STORY, Levers(), 22, words, min_story_tokens=1)
    assert ctx.tokens <= 22
    # 4 whole paragraphs (20 tokens) + the end of the 5th (2 tokens), cut at a word
    assert ctx.body_text == "p15w3 p15w4\n" + "".join(STORY[-4:])
    labels = [c.label for c in ctx.cut]
    assert labels == ["Story: start of line 16", "Story: lines 1–15 (the oldest)"]
    assert ctx.cut[1].chars == sum(len(p) for p in STORY[:15])


def test_a_single_huge_newest_line_keeps_its_end() -> None:
    big = " ".join(f"w{i}" for i in range(500))
    ctx = assemble_context(["intro\n", big], Levers(), 50, words, min_story_tokens=1)
    assert ctx.tokens == 50 and ctx.body_text.endswith("w499") and ctx.body_text.startswith("w450")


def test_authors_note_at_depth() -> None:
    levers = Levers(authors_note="Keep it tense.", an_depth=2)
    ctx = assemble_context(STORY, levers, 1000, words, min_story_tokens=1)
    assert kinds(ctx) == ["story", "authors_note", "story"]
    assert ctx.body_text.endswith("[Author's note: Keep it tense.]\n" + STORY[-2] + STORY[-1])


def test_authors_note_depth_counts_paragraphs_not_blank_lines() -> None:
    story = ["One.\n\n", "Two.\n\n", "Three."]
    ctx = assemble_context(story, Levers(authors_note="n", an_depth=1), 100, words, min_story_tokens=1)
    assert ctx.body_text == "One.\n\nTwo.\n\n[Author's note: n]\nThree."
    ctx = assemble_context(story, Levers(authors_note="n", an_depth=0), 100, words, min_story_tokens=1)
    assert ctx.body_text == "One.\n\nTwo.\n\nThree.\n[Author's note: n]\n"  # never glued to the last sentence
    ctx = assemble_context(story, Levers(authors_note="n", an_depth=9), 100, words, min_story_tokens=1)
    assert ctx.body_text.startswith("[Author's note: n]\nOne.")  # deeper than the story: at its top


def test_authors_note_survives_cutting() -> None:
    levers = Levers(authors_note="Rain.", an_depth=3)
    ctx = assemble_context(STORY, levers, 23, words, min_story_tokens=1)
    assert ctx.tokens <= 23
    assert ctx.body_text.endswith("[Author's note: Rain.]\n" + "".join(STORY[-3:]))


def test_world_info_triggers_on_whole_words_case_insensitive() -> None:
    story = ["The DRAGON slept under Mount Ember.\n", "Nobody knew about the dragonfly.\n"]
    entries = (
        WorldEntry(("dragon",), "Dragons breathe blue fire."),
        WorldEntry(("fly",), "Flies are sacred."),  # "dragonfly" is not the word "fly"
        WorldEntry(("mount ember", "volcano"), "Mount Ember is a dormant volcano."),
        WorldEntry(("wizard",), "Wizards are banned."),
    )
    ctx = assemble_context(story, Levers(world_info=entries), 1000, words, min_story_tokens=1)
    wi = [p for p in ctx.parts if p.kind == "world_info"]
    assert [p.text for p in wi] == ["Dragons breathe blue fire.\n", "Mount Ember is a dormant volcano.\n"]
    assert [p.label for p in wi] == ["World info [dragon]", "World info [mount ember]"]


def test_world_info_scan_depth_only_looks_at_recent_paragraphs() -> None:
    story = ["The dragon appears.\n"] + [para(i) for i in range(5)]
    entry = (WorldEntry(("dragon",), "Dragon lore."),)
    shallow = assemble_context(story, Levers(world_info=entry, scan_depth=5), 1000, words, min_story_tokens=1)
    deep = assemble_context(story, Levers(world_info=entry, scan_depth=6), 1000, words, min_story_tokens=1)
    assert "Dragon lore." not in shallow.prompt_text and "Dragon lore." in deep.prompt_text


def test_world_info_that_does_not_fit_is_cut_not_the_story() -> None:
    entries = (WorldEntry(("p19w0",), "lore " * 40), WorldEntry(("p19w1",), "short lore"))
    ctx = assemble_context(STORY, Levers(world_info=entries), 40, words, min_story_tokens=5)
    assert [c.kind for c in ctx.cut][0] == "world_info" and "short lore" in ctx.prompt_text
    assert ctx.body_text.endswith(STORY[-1]) and ctx.tokens <= 40


def test_all_levers_together_in_order() -> None:
    levers = Levers(
        premise="Noir", memory="Sam is a detective.", authors_note="Short sentences.", an_depth=1,
        world_info=(WorldEntry(("p19w2",), "Clue: the knife."),),
    )  # fmt: skip
    ctx = assemble_context(STORY, levers, 25, words, min_story_tokens=5)
    assert kinds(ctx) == ["premise", "memory", "world_info", "story", "authors_note", "story"]
    assert ctx.tokens <= 25 and ctx.body_text.endswith("[Author's note: Short sentences.]\n" + STORY[-1])


@pytest.mark.parametrize(
    ("passages", "levers", "budget", "message"),
    [
        ([], Levers(), 100, "story is empty"),
        (["  \n\n "], Levers(), 100, "story is empty"),
        (STORY, Levers(an_depth=-1), 100, "author's note depth must be between 0 and 100"),
        (STORY, Levers(an_depth=101), 100, "author's note depth"),
        (STORY, Levers(scan_depth=0), 100, "scan depth must be between 1 and 100"),
        (STORY, Levers(memory="m " * 90), 100, "leaves 10 of the 100 available"),
        (STORY, Levers(), 5, "lower max new tokens"),
    ],
)
def test_bad_input_gets_a_clear_message(passages, levers, budget, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOptionsError, match=message):
        assemble_context(passages, levers, budget, words, min_story_tokens=32)


def test_token_count_cache_counts_each_unchanged_line_once() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return words(text)

    cache = TokenCountCache()
    count = cache.counter("m", counting)
    assemble_context(STORY, Levers(memory="mem"), 1000, count, min_story_tokens=1)
    cold = len(calls)
    assert cold == 21  # 20 lines + memory
    calls.clear()
    assemble_context(STORY + ["new words"], Levers(memory="mem"), 1000, count, min_story_tokens=1)
    assert calls == ["new words"]  # only the new line is tokenized
    assert cache.hits == 21 and len(cache) == 22
    other = cache.counter("other-model", counting)
    other("mem")
    assert calls[-1] == "mem"  # counts are per model


def test_token_count_cache_is_bounded() -> None:
    cache = TokenCountCache(maxsize=3)
    for i in range(5):
        cache.count("m", f"t{i}", words)
    assert len(cache) == 3


def test_requests_for_instruct_and_base_models() -> None:
    levers = Levers(memory="Sam is a detective.", authors_note="Rain.", an_depth=1)
    ctx = assemble_context(["It was late.\n", "The phone rang."], levers, 100, words, min_story_tokens=1)
    params = SamplingParams(max_new_tokens=20)
    base = to_request(ctx, instruct=False, params=params)
    assert base.prompt == "Sam is a detective.\nIt was late.\n[Author's note: Rain.]\nThe phone rang."
    chat = to_request(ctx, instruct=True, params=params)
    system, user = chat.messages
    assert system.role == "system" and system.content.startswith(CONTINUE_SYSTEM_PROMPT)
    assert "Sam is a detective." in system.content and user.content == ctx.body_text
    rep = report(ctx, chat, model="m", context_window=120).as_json()
    assert rep["mode"] == "instruct" and rep["tokens"] == ctx.tokens and [s["role"] for s in rep["sent"]] == ["system", "user"]
    assert [p["kind"] for p in rep["parts"]] == ["memory", "story", "authors_note", "story"]
    own = to_request(ctx, instruct=True, params=params, continue_turn=True)  # the story as the model's own turn
    assert own.continue_turn and [m.role for m in own.messages] == ["system", "user", "assistant"]
    assert own.messages[0] == system and own.messages[-1].content == ctx.body_text
