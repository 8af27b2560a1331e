"""The arena: one prompt, two text generators, answers side by side without names, a vote, then the
names; and a leaderboard from all votes — a Bradley–Terry fit with bootstrap confidence intervals.

Chat models get the prompt as a user message; continuation models (no chat template, e.g. the
character LSTM) get it as text to continue, so any two text generators can meet.

A person's own models (finished training jobs) enter their rounds like any other; the leaderboard a
person sees leaves out the rounds that involve someone else's own model (see `own_models`).
"""

from __future__ import annotations

import math
import queue
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from generators.base import ChatMessage, InvalidOptionsError, StudioError, TextGenerator, TextRequest
from storage import repository as repo
from storage.models import ArenaBattle, utcnow

from . import presets
from .context import AppContext, check_text
from .generation import sampling_params, stream_text
from .own_models import shown_to

VOTES = ("a", "b", "tie", "both_bad")
SCORE = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}  # A's share of the win
ELO_SCALE, ELO_BASE = 400 / math.log(10), 1000.0


@dataclass(frozen=True)
class BattleView:
    id: str
    prompt: str
    text_a: str
    text_b: str
    vote: str | None
    model_a: str | None  # None until the vote: names stay hidden
    model_b: str | None


@dataclass(frozen=True)
class Standing:
    model: str
    rating: float
    low: float  # 95 % bootstrap interval
    high: float
    battles: int
    wins: float  # ties count half


def text_models(ctx: AppContext, owner: str | None = None) -> list[str]:
    """The shared text models plus `owner`'s own."""
    return ctx.registry.names("text", owner=owner)


def _view(b: ArenaBattle) -> BattleView:
    shown = b.vote is not None
    return BattleView(b.id, b.prompt, b.text_a, b.text_b, b.vote, b.model_a if shown else None, b.model_b if shown else None)


def _battle(s: Any, owner: str, battle_id: str) -> ArenaBattle:
    row = s.get(ArenaBattle, battle_id) if repo.is_row_id(battle_id) else None
    if row is None or row.owner != owner:
        raise repo.NotFoundError("That arena round does not exist.")
    return row


def start(ctx: AppContext, owner: str, prompt: Any, model_a: str | None = None, model_b: str | None = None,
          seed: int | None = None) -> BattleView:
    """A new round; models left empty ('random') are drawn at random, always two different ones."""
    check_text(prompt, "prompt", ctx.config.max_prompt_chars)
    if not prompt.strip():
        raise InvalidOptionsError("Type a prompt for the two models first.")
    models = text_models(ctx, owner)
    if len(models) < 2:
        raise InvalidOptionsError("The arena needs at least two text generators; configure another model.")
    picked = [m if m not in (None, "", "random") else None for m in (model_a, model_b)]
    for m in picked:
        if m is not None and m not in models:
            raise InvalidOptionsError(f"Unknown text model {m!r}; available: {', '.join(models)}.")
    rng = random.Random(seed)
    if picked[0] is None:
        picked[0] = rng.choice([m for m in models if m != picked[1]])
    if picked[1] is None:
        picked[1] = rng.choice([m for m in models if m != picked[0]])
    if picked[0] == picked[1]:
        raise InvalidOptionsError("Pick two different models (or leave one on random).")
    ctx.check_rate(owner, consume=False)
    with ctx.store.begin() as s:
        row = ArenaBattle(owner=owner, prompt=prompt.strip(), model_a=picked[0], model_b=picked[1])
        s.add(row)
        s.flush()
        return _view(row)


def _request(gen: TextGenerator, prompt: str, params: Any) -> TextRequest:
    if gen.supports_chat():
        return TextRequest(messages=(ChatMessage("user", prompt),), params=params)
    return TextRequest(prompt=prompt, params=params)


def stream(ctx: AppContext, owner: str, battle_id: str, params: dict[str, Any] | None = None,
           cancel: threading.Event | None = None, preset: str | None = None) -> Iterator[BattleView]:
    """Run both answers at once (two threads), yielding the round as the texts grow; saved at the end.
    `preset`: a sampler preset both answers start from (`params` given on top of it)."""
    with ctx.store.begin() as s:
        battle = _battle(s, owner, battle_id)
        if battle.vote is not None or battle.generation_a_id:
            raise InvalidOptionsError("This round has been answered already; start a new one.")
        models, prompt = (battle.model_a, battle.model_b), battle.prompt
    checked = presets.resolve(ctx, owner, preset, params) if preset else sampling_params(params or {}, ctx)
    updates: queue.Queue[tuple[int, str, str | None, BaseException | None]] = queue.Queue()
    texts, generation_ids = ["", ""], [None, None]
    cancel = cancel or threading.Event()

    def run(side: int) -> None:
        try:
            gen = ctx.registry.get_visible(models[side], owner)
            if not isinstance(gen, TextGenerator):
                raise InvalidOptionsError(f"{models[side]} is not a text model.")
            for delta, result in stream_text(ctx, owner, models[side], _request(gen, prompt, checked), cancel=cancel,
                                             source="arena", preset=preset):
                updates.put((side, delta, result.generation_id, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            updates.put((side, "", None, exc))
        finally:
            updates.put((side, "", None, StopIteration()))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    finished, error = 0, None
    try:
        while finished < 2:
            side, delta, generation_id, exc = updates.get()
            if isinstance(exc, StopIteration):
                finished += 1
                continue
            if exc is not None:
                error = error or exc
                cancel.set()  # one side failed: stop the other too
                continue
            texts[side] += delta
            generation_ids[side] = generation_id or generation_ids[side]
            yield BattleView(battle_id, prompt, texts[0], texts[1], None, None, None)
    finally:
        if finished < 2:  # the consumer left early (or one side failed): stop both sides
            cancel.set()
        for t in threads:
            t.join(timeout=60)
        with ctx.store.begin() as s:
            battle = _battle(s, owner, battle_id)
            battle.text_a, battle.text_b = texts
            battle.generation_a_id, battle.generation_b_id = generation_ids
    if error is not None:
        if isinstance(error, StudioError):
            raise error
        raise StudioError(f"The arena round failed: {error}") from error
    yield BattleView(battle_id, prompt, texts[0], texts[1], None, None, None)


def vote(ctx: AppContext, owner: str, battle_id: str, choice: Any) -> BattleView:
    """Record the vote (once) and reveal the names."""
    if choice not in VOTES:
        raise InvalidOptionsError(f"Vote one of: {', '.join(VOTES)}.")
    with ctx.store.begin() as s:
        battle = _battle(s, owner, battle_id)
        if battle.vote is not None:
            raise InvalidOptionsError("You have voted on this round already.")
        if not battle.generation_a_id or not battle.generation_b_id:
            raise InvalidOptionsError("Let both answers finish before voting.")
        battle.vote, battle.voted_at = choice, utcnow()
        return _view(battle)


def votes(ctx: AppContext, viewer: str | None = None) -> list[tuple[str, str, str]]:
    """(model_a, model_b, vote) of every voted round of all users (no texts) that `viewer` may see: rounds
    with someone else's own model are left out (None: only rounds between shared models)."""
    with ctx.store.begin() as s:
        rows = s.execute(select(ArenaBattle.model_a, ArenaBattle.model_b, ArenaBattle.vote, ArenaBattle.owner)
                         .where(ArenaBattle.vote.is_not(None))).all()
    return [(a, b, v) for a, b, v, player in rows
            if shown_to(ctx, a, viewer, player) and shown_to(ctx, b, viewer, player)]


# ------------------------------------------------------------------ Bradley–Terry


def bradley_terry(games: Sequence[tuple[str, str, float]], iterations: int = 200, prior: float = 0.5) -> dict[str, float]:
    """Strengths from (a, b, a's score in [0, 1]) by the MM algorithm (Hunter 2004), as Elo-scaled
    ratings (mean 1000). `prior` adds that many virtual ties against an average opponent per model,
    which keeps the fit finite when a model won or lost every game."""
    models = sorted({m for a, b, _ in games for m in (a, b)})
    if not models:
        return {}
    index = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = np.full(n, prior)  # virtual half-win per virtual tie
    pairs = np.zeros((n, n))
    for a, b, score in games:
        i, j = index[a], index[b]
        wins[i] += score
        wins[j] += 1 - score
        pairs[i, j] += 1
        pairs[j, i] += 1
    strength = np.ones(n)
    for _ in range(iterations):
        # the virtual opponent has strength 1 and 2 * prior games with each model
        denom = (pairs / (strength[:, None] + strength[None, :])).sum(1) + 2 * prior / (strength + 1.0)
        new = wins / denom
        new /= np.exp(np.log(new).mean())
        if np.allclose(new, strength, rtol=1e-10, atol=1e-12):
            strength = new
            break
        strength = new
    ratings = ELO_SCALE * np.log(strength)
    ratings += ELO_BASE - ratings.mean()
    return {m: float(ratings[index[m]]) for m in models}


def leaderboard(ctx: AppContext, viewer: str | None = None, samples: int = 200, seed: int = 0) -> list[Standing]:
    """Ratings with 95 % intervals from a bootstrap over rounds, best first, from the rounds `viewer` may see
    (their own models' rounds included)."""
    games = [(a, b, SCORE[v]) for a, b, v in votes(ctx, viewer)]
    return standings(games, samples, seed)


def standings(games: Sequence[tuple[str, str, float]], samples: int = 200, seed: int = 0) -> list[Standing]:
    point = bradley_terry(games)
    if not point:
        return []
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {m: [] for m in point}
    for _ in range(samples):
        pick = rng.integers(0, len(games), len(games))
        fit = bradley_terry([games[k] for k in pick], iterations=100)
        for m in point:
            boot[m].append(fit.get(m, ELO_BASE))
    out = []
    for m, r in point.items():
        played = [g for g in games if m in g[:2]]
        won = sum(g[2] if g[0] == m else 1 - g[2] for g in played)
        low, high = np.percentile(boot[m], [2.5, 97.5]) if samples else (r, r)
        out.append(Standing(m, r, float(low), float(high), len(played), won))
    return sorted(out, key=lambda s: -s.rating)
