"""The blind arena: random distinct pairs, both answers streamed, one vote, names after it; the
Bradley–Terry leaderboard recovers a known order and survives a restart."""

from __future__ import annotations

import random

import pytest
from gradio_client import Client

from generators.base import InvalidOptionsError
from storage.repository import NotFoundError
from tests.conftest import free_port
from webui.server import launch
from webui.services import arena


def synthetic_games(strengths: dict[str, float], n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    names = list(strengths)
    games = []
    for _ in range(n):
        a, b = rng.sample(names, 2)
        p = strengths[a] / (strengths[a] + strengths[b])
        games.append((a, b, 1.0 if rng.random() < p else 0.0))
    return games


def test_bradley_terry_recovers_the_known_order() -> None:
    truth = {"best": 8.0, "good": 3.0, "fair": 1.0, "poor": 0.3}
    standings = arena.standings(synthetic_games(truth, 1500), samples=100)
    assert [s.model for s in standings] == ["best", "good", "fair", "poor"]
    for s in standings:
        assert s.low <= s.rating <= s.high
    # the Elo-scale gap matches the true log-strength ratio (400·log10(8/0.3) ≈ 570) within sampling error
    gap = standings[0].rating - standings[-1].rating
    assert 450 < gap < 700, gap
    assert abs(sum(s.rating for s in standings) / 4 - 1000) < 1e-6


def test_ties_mean_equal_and_a_clean_sweep_stays_finite() -> None:
    tied = arena.bradley_terry([("a", "b", 0.5)] * 20)
    assert abs(tied["a"] - tied["b"]) < 1e-6
    sweep = arena.bradley_terry([("a", "b", 1.0)] * 10)
    assert 1000 < sweep["a"] < 2000 and sweep["a"] > sweep["b"]


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"alpha": {"words": 6}, "beta": {"words": 4}, "gamma": {"words": 3}})


def play(ctx, owner: str, prompt: str, choice: str, a: str | None = None, b: str | None = None):  # type: ignore[no-untyped-def]
    battle = arena.start(ctx, owner, prompt, a, b)
    assert battle.model_a is None and battle.model_b is None  # hidden
    last = None
    for last in arena.stream(ctx, owner, battle.id, {"max_new_tokens": 32}):
        assert last.model_a is None
    assert last and last.text_a and last.text_b
    return arena.vote(ctx, owner, battle.id, choice)


def test_a_round_streams_both_hides_names_until_the_vote(ctx) -> None:
    seen = set()
    for i in range(12):
        battle = arena.start(ctx, "ann", f"q{i}", seed=i)
        with ctx.store.begin() as s:
            from storage.models import ArenaBattle

            row = s.get(ArenaBattle, battle.id)
            assert row.model_a != row.model_b
            seen |= {row.model_a, row.model_b}
    assert seen == {"alpha", "beta", "gamma"}
    revealed = play(ctx, "ann", "Say hello", "a", "alpha", "beta")
    assert (revealed.model_a, revealed.model_b, revealed.vote) == ("alpha", "beta", "a")
    with pytest.raises(InvalidOptionsError, match="voted on this round already"):
        arena.vote(ctx, "ann", revealed.id, "b")
    with pytest.raises(NotFoundError):
        arena.vote(ctx, "bob", revealed.id, "b")
    fresh = arena.start(ctx, "ann", "later", "alpha", "gamma")
    with pytest.raises(InvalidOptionsError, match="Let both answers finish"):
        arena.vote(ctx, "ann", fresh.id, "a")
    for bad in (dict(prompt=" "), dict(prompt="x", a="alpha", b="alpha"), dict(prompt="x", a="nope")):
        with pytest.raises(InvalidOptionsError):
            arena.start(ctx, "ann", bad["prompt"], bad.get("a"), bad.get("b"))
    with pytest.raises(InvalidOptionsError, match="one of"):
        arena.vote(ctx, "ann", fresh.id, "A!")


def test_leaderboard_from_votes_survives_a_restart(ctx, make_ctx) -> None:
    for i in range(4):
        play(ctx, "ann", f"p{i}", "a", "alpha", "gamma")
    play(ctx, "bob", "p", "tie", "beta", "gamma")
    board = arena.leaderboard(ctx)
    assert board[0].model == "alpha" and board[-1].model == "gamma" and board[0].battles == 4
    ctx.store.close()
    again = make_ctx({"alpha": {}, "beta": {}, "gamma": {}})  # same data folder, a new process
    assert [(s.model, round(s.rating)) for s in arena.leaderboard(again)] == [(s.model, round(s.rating)) for s in board]


def test_arena_through_the_page_api(make_ctx) -> None:
    ctx = make_ctx({"alpha": {"words": 5}, "beta": {"words": 3}}, port=free_port())
    demo = launch(ctx, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        a_text, b_text, note = client.predict("Tell me a fact", "random", "random", 32, 0.7, api_name="/arena_ask")
        assert a_text and b_text and "Which is better" in note
        reveal, board, _plot = client.predict(api_name="/arena_vote_b")
        assert "B was **" in reveal and {row[0] for row in board["data"]} == {"alpha", "beta"}
    finally:
        demo.close()
