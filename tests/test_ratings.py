"""Ratings: thumbs up/down with a comment on replies, passages and images, stored with the generation
record; one per user and output; counts per generator; nobody rates what they cannot see."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from generators.base import InvalidOptionsError
from storage.models import Rating
from storage.repository import NotFoundError
from webui.services import chat, images, ratings, story
from webui.services.story_values import story_settings


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"quick": {"words": 3}, "other": {"words": 2}}, images=True)


def reply(ctx, owner: str, model: str, text: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    settings = chat.reply_settings(ctx, model, {})
    view = chat.add_user_message(ctx, owner, None, text, settings)
    for _ in chat.stream_reply(ctx, owner, view.id, settings):
        pass
    messages = chat.get_chat(ctx, owner, view.id).messages
    return messages[0].id, messages[1].id


def test_rate_replies_passages_and_images_then_count_per_generator(ctx) -> None:
    user_msg, answer = reply(ctx, "ann", "quick", "hi")
    _, other_answer = reply(ctx, "bob", "other", "hello")
    assert ratings.rate(ctx, "ann", "message", answer, "up", "  concise  ") == 1
    assert ratings.rate(ctx, "bob", "message", other_answer, -1) == -1
    made = story.create_story(ctx, "ann", "s", story_settings(ctx, "quick", {}), "Once")
    for _ in story.continue_story(ctx, "ann", made.id, story_settings(ctx, "quick", {})):
        pass
    passage = [p for p in story.get_story(ctx, "ann", made.id).passages if p.author == "model"][0]
    ratings.rate(ctx, "ann", "passage", passage.id, "down")
    image = images.generate(ctx, "ann", "gan-mnist32", 3, 1, 1).images[0]
    ratings.rate(ctx, "ann", "image", image.id, "good")
    board = {r.generator: (r.up, r.down, r.comments) for r in ratings.by_generator(ctx)}
    assert board == {"quick": (1, 1, 1), "other": (0, 1, 0), "gan-mnist32": (1, 0, 0)}
    with ctx.store.begin() as s:  # stored with the generation record that made the output
        assert all(r.generation_id for r in s.scalars(select(Rating)))
    assert ratings.rating_of(ctx, "ann", "message", answer) == (1, "concise")
    # rating again replaces; clearing removes
    ratings.rate(ctx, "ann", "message", answer, "down")
    assert ratings.rating_of(ctx, "ann", "message", answer) == (-1, "")
    ratings.rate(ctx, "ann", "message", answer, None)
    assert ratings.rating_of(ctx, "ann", "message", answer) == (0, "")
    with pytest.raises(InvalidOptionsError, match="Only what a model wrote"):
        ratings.rate(ctx, "ann", "message", user_msg, "up")


@pytest.mark.parametrize(("kind", "value", "comment", "error"), [
    ("message", "sideways", "", InvalidOptionsError), ("message", True, "", InvalidOptionsError),
    ("song", "up", "", InvalidOptionsError), ("message", "up", "x" * 2001, InvalidOptionsError),
    ("message", "up", "\x00", InvalidOptionsError), ("image", "up", "", NotFoundError)])
def test_bad_ratings_are_refused_and_change_nothing(ctx, kind, value, comment, error) -> None:
    _, answer = reply(ctx, "ann", "quick", "hi")
    with pytest.raises(error):
        ratings.rate(ctx, "ann", kind, answer, value, comment)
    assert ratings.by_generator(ctx) == []


def test_nobody_rates_what_they_cannot_see(ctx) -> None:
    _, answer = reply(ctx, "ann", "quick", "hi")
    image = images.generate(ctx, "ann", "gan-mnist32", 3, 1, 1).images[0]
    for kind, target in (("message", answer), ("image", image.id), ("message", "0" * 32), ("passage", "../x")):
        with pytest.raises(NotFoundError):
            ratings.rate(ctx, "bob", kind, target, "down")
    assert ratings.by_generator(ctx) == []


def test_rate_through_the_page_api(ctx) -> None:
    from gradio_client import Client

    from tests.conftest import free_port
    from webui.server import launch

    _, answer = reply(ctx, "local", "quick", "hi")
    ctx.settings.__dict__["port"] = free_port()  # frozen settings; a free port for this launch
    demo = launch(ctx, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        board, note = client.predict("message", answer, "up", "clear and short", api_name="/rate")
        assert note == "Saved 👍." and board["data"][0][:4] == ["quick", 1, 0, 1]
        with pytest.raises(Exception, match="does not exist"):
            client.predict("image", "f" * 32, "up", "", api_name="/rate")
        assert client.predict(api_name="/ratings_table")["data"][0][0] == "quick"
    finally:
        demo.close()
