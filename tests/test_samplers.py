"""typical-p, DRY and XTC: each one's effect on a fixed distribution, then inside the plugin, alone and in the
batched decoder (each sequence of a batch keeps its own sampler)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from generators.base import InvalidOptionsError, SamplingParams, TextRequest, validate_model
from generators.text.decoding import Sampler, last_token_ids
from generators.text.logits_processing import DryPenalty, ExcludeTopChoices
from generators.text.transformers_lm import TransformersLM


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def kept(scores: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(scores[0].tolist()) if math.isfinite(v)}


def sampler(seed: int = 0, **values: object) -> Sampler:
    return Sampler(SamplingParams(**{"temperature": 1.0, "top_k": 0, "top_p": 1.0, **values}), seed=seed, device="cpu")


# ---------------------------------------------------------------- typical-p


def test_typical_p_keeps_the_tokens_whose_surprise_is_closest_to_the_entropy() -> None:
    # one likely token, two middling ones, a long unlikely tail: entropy 2.88 nats; the middling tokens
    # (surprise 2.30) are the typical ones, the likeliest (0.69) and the tail (6.91) are not
    probs = [0.5, 0.1, 0.1] + [0.001] * 300
    logits = logits_of(probs)
    assert kept(sampler(typical_p=0.15).processors(torch.tensor([[0]]), logits)) == {1, 2}
    assert kept(sampler(typical_p=0.5).processors(torch.tensor([[0]]), logits)) == {0, 1, 2}  # .2 + .5 reaches .5
    assert kept(sampler().processors(torch.tensor([[0]]), logits)) == set(range(len(probs)))  # 1.0 = off
    draws = {sampler(typical_p=0.15, seed=s)(torch.tensor([[0]]), logits) for s in range(20)}
    assert draws == {1, 2}  # the likeliest token is never drawn


# ---------------------------------------------------------------- DRY


def test_dry_penalises_the_token_that_would_extend_a_repeat() -> None:
    dry = DryPenalty(multiplier=0.8, base=1.75, allowed_length=2, breaker_ids=())
    ids = [1, 2, 3, 4, 9, 1, 2, 3]  # "1 2 3" repeats; 4 followed it last time
    assert dry.match_lengths(ids) == {4: 3}
    out = dry(torch.tensor([ids]), torch.zeros(1, 10))
    assert out[0, 4].item() == pytest.approx(-0.8 * 1.75 ** (3 - 2))
    assert out[0].tolist().count(0.0) == 9  # nothing else changes
    # a longer repeat is penalised exponentially more
    longer = dry(torch.tensor([[1, 2, 3, 4, 5, 9, 1, 2, 3, 4]]), torch.zeros(1, 10))
    assert longer[0, 5].item() == pytest.approx(-0.8 * 1.75 ** (4 - 2))


def test_dry_allows_short_repeats_and_stops_at_sequence_breakers() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    assert torch.equal(DryPenalty(0.8, 1.75, 4, ())(ids, torch.zeros(1, 10)), torch.zeros(1, 10))  # 3 < 4
    broken = DryPenalty(0.8, 1.75, 2, breaker_ids={2})(ids, torch.zeros(1, 10))
    assert torch.equal(broken, torch.zeros(1, 10))  # "2" ends the match at length 1
    assert torch.equal(DryPenalty(0.8, 1.75, 2, {3})(ids, torch.zeros(1, 10)), torch.zeros(1, 10))  # ends on one


def test_dry_in_the_sampler_turns_a_greedy_repeat_aside() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 9, 1, 2, 3]])
    logits = torch.zeros(1, 10)
    logits[0, 4], logits[0, 5] = 2.0, 1.5
    assert Sampler(SamplingParams(temperature=0), seed=0, device="cpu")(ids, logits) == 4
    dry = Sampler(SamplingParams(temperature=0, dry_multiplier=0.8), seed=0, device="cpu")
    assert not dry.plain_greedy and dry(ids, logits) == 5  # 2.0 - 1.4 < 1.5


def test_dry_sequence_breakers_are_tokens_of_the_tokenizer(smol_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    breakers = last_token_ids(tok, ["\n", ":"])
    assert breakers == {tok.encode("a\n")[-1], tok.encode("a:")[-1]} and len(breakers) == 2
    with pytest.raises(InvalidOptionsError, match="sequence breaker"):
        validate_model(SamplingParams, {"dry_sequence_breakers": ["\n", ""]})


# ---------------------------------------------------------------- XTC


def test_xtc_removes_the_top_choices_but_the_least_likely_of_them() -> None:
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    always = ExcludeTopChoices(threshold=0.15, probability=1.0, rng=torch.Generator().manual_seed(0))
    assert kept(always(None, logits)) == {2, 3}  # 0.4 and 0.3 go; 0.2 is the least likely above 0.15
    assert kept(ExcludeTopChoices(0.35, 1.0, torch.Generator())(None, logits)) == {0, 1, 2, 3}  # one above: kept
    never = ExcludeTopChoices(0.15, 0.0, torch.Generator())
    assert torch.equal(never(None, logits), logits)
    protected = ExcludeTopChoices(0.15, 1.0, torch.Generator(), protected_ids={1})  # e.g. end of text
    assert torch.equal(protected(None, logits), logits)


def test_xtc_acts_with_its_probability_from_the_seeded_generator() -> None:
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    xtc = ExcludeTopChoices(0.15, 0.5, torch.Generator().manual_seed(7))
    acted = [kept(xtc(None, logits)) == {2, 3} for _ in range(400)]
    assert 150 < sum(acted) < 250
    again = ExcludeTopChoices(0.15, 0.5, torch.Generator().manual_seed(7))
    assert [kept(again(None, logits)) == {2, 3} for _ in range(400)] == acted  # a seed repeats
    draws = {sampler(xtc_probability=1.0, xtc_threshold=0.15, seed=s)(torch.tensor([[0]]), logits) for s in range(30)}
    assert draws <= {2, 3} and draws


# ---------------------------------------------------------------- in the plugin, alone and batched


@pytest.fixture(scope="module", params=[1, 4], ids=["alone", "batched"])
def tiny_lm(request, tiny_model_dir: Path) -> TransformersLM:  # type: ignore[no-untyped-def]
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": request.param})
    gen.load()
    yield gen
    gen.unload()


def tokens(gen: TransformersLM, params: SamplingParams, prompt: str) -> list[str]:
    return [e.token for c in gen.stream(TextRequest(prompt=prompt, params=params, logprobs=0)) for e in c.logprobs]


def longest_repeat(seq: list[str], n: int = 3) -> int:
    """How many n-grams of `seq` occurred before."""
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    return len(grams) - len(set(grams))


def test_plugin_dry_breaks_greedy_loops(tiny_lm: TransformersLM) -> None:
    prompt = "one two three one two three one two three"
    plain = SamplingParams(temperature=0, max_new_tokens=40)
    looped = tokens(tiny_lm, plain, prompt)
    dry = tokens(tiny_lm, plain.model_copy(update={"dry_multiplier": 2.0, "dry_allowed_length": 2}), prompt)
    assert dry != looped
    assert longest_repeat(dry) < longest_repeat(looped)


def test_plugin_batched_sequences_keep_their_own_samplers(tiny_lm: TransformersLM) -> None:
    """Two requests at once, one with XTC + typical-p, one greedy: the greedy one is as it is alone."""
    from concurrent.futures import ThreadPoolExecutor

    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    wild = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.5, xtc_probability=1.0,
                          xtc_threshold=0.01, max_new_tokens=12, seed=3)
    alone = tokens(tiny_lm, greedy, "The cat")
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(tokens, tiny_lm, greedy, "The cat")
        b = pool.submit(tokens, tiny_lm, wild, "The cat")
        assert a.result() == alone
        assert b.result() != alone
    assert tokens(tiny_lm, wild, "The cat") == b.result()  # the seed repeats, batched or not
