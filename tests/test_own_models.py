"""A person's own model (a finished training job) is usable by them everywhere — the arena, the metrics, the
ratings, every API route — and by nobody else: others get 'unknown model' and never see its name, not even in
the shared leaderboard, metrics or ratings tables."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gradio_client import Client

from generators.base import InvalidOptionsError, UnknownGeneratorError
from generators.registry import ModelSpec
from tests.conftest import free_port
from webui.server import launch
from webui.services import arena, chat, images, metrics, ratings
from webui.services.accounts import Accounts

MINE = "ann/mine"  # how training.register_job_model names ann's finished job "mine"


def own_model(ctx: Any, owner: str = "ann", name: str = "mine", words: int = 4) -> str:
    """Register a model for `owner` only, as a finished training job's model is registered."""
    ctx.registry.add(ModelSpec(f"{owner}/{name}", "fake-text", {"words": words}, owner=owner))
    return f"{owner}/{name}"


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"alpha": {"words": 5}, "beta": {"words": 3}})
    own_model(ctx)
    return ctx


def drawn(ctx: Any, owner: str) -> set[str]:
    from sqlalchemy import select

    from storage.models import ArenaBattle

    with ctx.store.begin() as s:
        rows = s.execute(select(ArenaBattle.model_a, ArenaBattle.model_b).where(ArenaBattle.owner == owner)).all()
    return {m for row in rows for m in row}


def play(ctx: Any, owner: str, a: str, b: str, choice: str = "a") -> arena.BattleView:
    battle = arena.start(ctx, owner, "Say something", a, b)
    for _ in arena.stream(ctx, owner, battle.id, {"max_new_tokens": 8}):
        pass
    return arena.vote(ctx, owner, battle.id, choice)


def test_the_owner_plays_their_model_in_the_arena_and_only_they_see_its_rounds(ctx) -> None:
    assert MINE in arena.text_models(ctx, "ann") and MINE not in arena.text_models(ctx, "bob")
    revealed = play(ctx, "ann", MINE, "alpha")
    assert (revealed.model_a, revealed.model_b) == (MINE, "alpha")
    for _ in range(2):
        play(ctx, "bob", "alpha", "beta", "b")
    with pytest.raises(InvalidOptionsError, match="Unknown text model") as refused:
        arena.start(ctx, "bob", "hi", MINE, "alpha")
    assert MINE not in str(refused.value).split("available:")[1]
    assert {s.model for s in arena.leaderboard(ctx, "ann")} == {MINE, "alpha", "beta"}
    assert {s.model for s in arena.leaderboard(ctx, "bob")} == {"alpha", "beta"}
    assert {s.model for s in arena.leaderboard(ctx)} == {"alpha", "beta"}  # the page before anyone logs in
    # a random draw may pick ann's model for ann, never for bob
    for seed in range(20):
        arena.start(ctx, "bob", "q", seed=seed)
        arena.start(ctx, "ann", "q", seed=seed)
    assert MINE not in drawn(ctx, "bob") and MINE in drawn(ctx, "ann")
    # the job is deleted (its model unregistered): its rounds stay ann's alone
    ctx.registry.remove(MINE)
    assert {s.model for s in arena.leaderboard(ctx, "bob")} == {"alpha", "beta"}
    assert MINE in {s.model for s in arena.leaderboard(ctx, "ann")}


def test_metrics_of_an_own_model_are_measured_for_and_shown_to_its_owner_only(ctx) -> None:
    found = metrics.run(ctx, [MINE], owner="ann")
    assert {m.generator for m in found} == {MINE} and {"bleu", "rouge_l"} <= {m.metric for m in found}
    metrics.run(ctx, ["beta"])
    assert {m.generator for m in metrics.latest(ctx, "ann")} == {MINE, "beta"}
    assert {m.generator for m in metrics.latest(ctx, "bob")} == {"beta"}
    assert {m.generator for m in metrics.history(ctx)} == {"beta"}
    with pytest.raises(InvalidOptionsError, match="Unknown model") as refused:
        metrics.run(ctx, [MINE], owner="bob")
    assert "ann/" not in str(refused.value).split("Available:")[1]
    ctx.registry.remove(MINE)  # deleted: still never shown to bob
    assert {m.generator for m in metrics.latest(ctx, "bob")} == {"beta"}


def test_ratings_of_an_own_model_are_counted_for_its_owner_only(ctx) -> None:
    settings = chat.reply_settings(ctx, MINE, {})
    view = chat.add_user_message(ctx, "ann", None, "hi", settings)
    for _ in chat.stream_reply(ctx, "ann", view.id, settings):
        pass
    answer = chat.get_chat(ctx, "ann", view.id).messages[1].id
    ratings.rate(ctx, "ann", "message", answer, "up")
    assert [r.generator for r in ratings.by_generator(ctx, "ann")] == [MINE]
    assert ratings.by_generator(ctx, "bob") == [] and ratings.by_generator(ctx) == []


def test_someone_elses_model_is_unknown_to_the_registry_lookup(ctx) -> None:
    assert ctx.registry.get_visible(MINE, "ann") is ctx.registry.get(MINE)
    with pytest.raises(UnknownGeneratorError) as refused:
        ctx.registry.get_visible(MINE, "bob")
    assert str(refused.value) == f"Unknown model {MINE!r}. Available models: alpha, beta."


# ------------------------------------------------------------------ two owners, auth on, every route


@pytest.fixture
def two_owners(make_ctx):  # type: ignore[no-untyped-def]
    ctx = make_ctx({"alpha": {"words": 5}, "beta": {"words": 3}}, images=True, port=free_port())
    ctx.registry.add(ModelSpec("ann/digits", "gan", {"weights": "builtin:gan-mnist32"}, owner="ann"))  # a trained GAN
    accounts = Accounts(ctx.settings.users_path)
    accounts.add("root", "root-password")  # the first account is the admin
    keys = {"ann": accounts.add("ann", "ann-password"), "bob": accounts.add("bob", "bob-password")}
    own_model(ctx)
    demo = launch(ctx, quiet=True)
    clients = {n: Client(demo.local_url, auth=(n, f"{n}-password"), verbose=False) for n in keys}
    yield ctx, demo.local_url.rstrip("/"), clients, {n: {"Authorization": f"Bearer {k}"} for n, k in keys.items()}
    demo.close()


def test_the_owner_uses_their_model_on_every_route_and_the_other_is_refused(two_owners) -> None:
    ctx, url, clients, headers = two_owners
    scoring = {"model": MINE, "prompt": "one two three", "max_tokens": 0, "echo": True, "logprobs": 2}
    asks = [("/v1/completions", scoring),
            ("/v1/completions", {"model": MINE, "prompt": "one two", "max_tokens": 3, "logprobs": 1, "echo": True}),
            ("/v1/chat/completions", {"model": MINE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                      "logprobs": True, "top_logprobs": 1})]
    for path, body in asks:
        ok = httpx.post(url + path, json=body, headers=headers["ann"], timeout=60)
        assert ok.status_code == 200, (path, ok.text)
        assert ok.json()["model"] == MINE
        refused = httpx.post(url + path, json=body, headers=headers["bob"], timeout=60)
        assert refused.status_code == 404, (path, refused.text)
        message = refused.json()["error"]["message"]
        assert message.startswith(f"Unknown model {MINE!r}. Available models: alpha, beta,"), message
        assert "ann/" not in message.split("Available")[1]
    echoed = httpx.post(url + "/v1/completions", json=scoring, headers=headers["ann"], timeout=60).json()
    assert echoed["choices"][0]["text"] == "one two three" and echoed["choices"][0]["logprobs"]["tokens"]
    assert MINE in [m["id"] for m in httpx.get(f"{url}/v1/models", headers=headers["ann"]).json()["data"]]
    assert MINE not in [m["id"] for m in httpx.get(f"{url}/v1/models", headers=headers["bob"]).json()["data"]]
    # ann's own image model: the image API draws with it for her, refuses it to bob; her gallery re-runs it
    ask = {"model": "ann/digits", "label": 3, "seed": 1, "count": 1}
    made = httpx.post(f"{url}/api/images", json=ask, headers=headers["ann"], timeout=60)
    assert made.status_code == 200, made.text
    refused = httpx.post(f"{url}/api/images", json=ask, headers=headers["bob"], timeout=60)
    assert refused.status_code == 404 and "ann/" not in refused.json()["error"]["message"].split("Available")[1]
    again = images.rerun(ctx, "ann", made.json()["data"][0]["id"])
    assert again.images[0].model == "ann/digits"

    ann, bob = clients["ann"], clients["bob"]
    # the arena and metrics pickers list ann's model to ann only
    def listed(client: Client) -> set[str]:
        return {c[1] if isinstance(c, list | tuple) else c for p in client.predict(api_name="/my_models")
                if isinstance(p, dict) for c in p.get("choices", [])}

    assert MINE in listed(ann) and MINE not in listed(bob)
    a_text, b_text, note = ann.predict("Tell me a fact", MINE, "alpha", 32, 0.7, "", api_name="/arena_ask")
    assert a_text and b_text and "Which is better" in note
    reveal, board, _plot = ann.predict(api_name="/arena_vote_a")
    assert f"A was **{MINE}**" in reveal and MINE in {row[0] for row in board["data"]}
    with pytest.raises(Exception, match="Unknown text model|not in the list of choices"):
        bob.predict("Tell me a fact", MINE, "alpha", 32, 0.7, "", api_name="/arena_ask")
    # ann (not an admin) may measure her own model, not the shared ones; bob may not name hers
    latest, _plot, status = ann.predict([MINE], "bleu", api_name="/run_metrics")
    assert "Measured" in status and {row[0] for row in latest["data"]} == {MINE}
    with pytest.raises(Exception, match="Only an admin can measure the shared models"):
        ann.predict(["alpha"], "bleu", api_name="/run_metrics")
    with pytest.raises(Exception, match="Unknown model|not in the list of choices"):
        bob.predict([MINE], "bleu", api_name="/run_metrics")
    assert {m.generator for m in metrics.latest(ctx, "bob")} == set()
