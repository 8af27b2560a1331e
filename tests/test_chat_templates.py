"""The Chat service with instruct templates on a tiny real model: a chosen template is what the model
reads ("what was sent" = the generation's prompt tokens), the model's own is the default, a person's own
template is theirs alone, and a model that cannot take a template says what to pick."""

from __future__ import annotations

from pathlib import Path

import pytest

from generators.base import InvalidOptionsError
from generators.registry import ModelSpec, Registry
from generators.text.instruct import FORMATS
from generators.text.transformers_lm import TransformersLM
from storage import Store
from storage import repository as repo
from webui.services import chat, instruct
from webui.services.context import AppContext
from webui.settings import ModelEntry, Settings


@pytest.fixture(scope="module")
def ctx(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("chat-templates")
    options = {"source": str(tiny_model_dir), "device": "cpu"}
    settings = Settings(data_dir=tmp / "data", models=[ModelEntry(name="tiny", plugin="transformers", options=options)])
    registry = Registry({"transformers": TransformersLM}, cache_dir=str(tmp / "cache"))
    registry.add(ModelSpec("tiny", "transformers", options))
    context = AppContext(settings=settings, registry=registry, store=Store(settings.database_url, settings.data_dir))
    yield context
    context.registry.unload("tiny")
    context.store.close()


def reply(ctx, owner: str, text: str, template: str | None, chat_id: str | None = None) -> str:  # type: ignore[no-untyped-def]
    settings = chat.reply_settings(ctx, "tiny", {"max_new_tokens": 4, "temperature": 0, "seed": 1}, "Be brief.",
                                   template=template, owner=owner)
    view = chat.add_user_message(ctx, owner, chat_id, text, settings)
    for _ in chat.stream_reply(ctx, owner, view.id, settings):
        pass
    return view.id


def prompt_tokens(ctx, owner: str) -> int:  # type: ignore[no-untyped-def]
    with ctx.store.begin() as s:
        return repo.generations_of(s, owner)[0].prompt_tokens


def test_the_chosen_template_is_what_the_model_reads(ctx) -> None:  # type: ignore[no-untyped-def]
    chat_id = reply(ctx, "ann", "Hello", "Alpaca")
    sent = chat.sent_prompt(ctx, "ann", chat_id)
    assert sent.text.startswith("Be brief.\n\n### Instruction:\nHello\n\n### Response:\n")
    assert sent.tokens == prompt_tokens(ctx, "ann")
    with ctx.store.begin() as s:
        gen = repo.generations_of(s, "ann")[0]
        assert "### Instruction:" in gen.params["stop"]  # the format's own end of a turn stops the reply
        assert repo.get_session(s, "ann", chat_id).settings["template"] == "Alpaca"


def test_the_models_own_template_is_the_default(ctx) -> None:  # type: ignore[no-untyped-def]
    chat_id = reply(ctx, "bob", "Hello", None)
    sent = chat.sent_prompt(ctx, "bob", chat_id)
    gen = ctx.registry.get("tiny")
    expected = gen.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "Hello"}],
                                                 tokenize=False, add_generation_prompt=True)
    assert sent.text == expected and sent.tokens == prompt_tokens(ctx, "bob")


def test_a_persons_own_template_is_checked_and_theirs_alone(ctx) -> None:  # type: ignore[no-untyped-def]
    source = ("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    saved = instruct.save_template(ctx, "carol", "Angles", source)
    assert saved.name in instruct.template_names(ctx, "carol")
    assert "Angles" not in instruct.template_names(ctx, "dave")
    with pytest.raises(InvalidOptionsError, match="no instruct template named 'Angles'"):
        chat.reply_settings(ctx, "tiny", {}, template="Angles", owner="dave")
    chat_id = reply(ctx, "carol", "Hi", "angles")
    assert chat.sent_prompt(ctx, "carol", chat_id).text == "<<system>>Be brief.\n<<user>>Hi\n<<assistant>>"
    with pytest.raises(InvalidOptionsError, match="built-in"):
        instruct.save_template(ctx, "carol", "ChatML", FORMATS["ChatML"].source)
    with pytest.raises(InvalidOptionsError, match="does not compile"):
        instruct.save_template(ctx, "carol", "Broken", "{% if %}")
    instruct.delete_template(ctx, "carol", "Angles")
    assert "Angles" not in instruct.template_names(ctx, "carol")


def test_a_model_that_cannot_take_a_template_says_what_to_pick(make_ctx) -> None:  # type: ignore[no-untyped-def]
    fake_ctx = make_ctx({"fake": {}})
    settings = chat.reply_settings(fake_ctx, "fake", {}, template="ChatML", owner="ann")
    view = chat.add_user_message(fake_ctx, "ann", None, "Hello", settings)
    with pytest.raises(InvalidOptionsError, match="Model's own"):
        list(chat.stream_reply(fake_ctx, "ann", view.id, settings))


def test_a_story_continues_with_its_chosen_template(ctx) -> None:  # type: ignore[no-untyped-def]
    from webui.services import story

    settings = story.story_settings(ctx, "tiny", {"max_new_tokens": 4, "temperature": 0, "seed": 1},
                                    template="Vicuna", owner="erin")
    assert settings.as_json()["template"] == "Vicuna"
    created = story.create_story(ctx, "erin", "Tale", settings, "The lighthouse keeper woke.")
    view = created
    for view in story.continue_story(ctx, "erin", created.id, settings):  # noqa: B007 - the last view counts
        pass
    sent = view.last_context
    assert sent["rendered"].startswith("You are a skilled fiction writer") and "\nUSER: Write the story." in sent["rendered"]
    # the story is the start of the model's own turn, left open in the chosen format
    assert sent["rendered"].endswith("ASSISTANT: The lighthouse keeper woke.")
    assert sent["rendered_tokens"] == prompt_tokens(ctx, "erin")
    reopened = story.settings_from_json(ctx, story.get_story(ctx, "erin", view.id).settings)
    assert reopened.template == "Vicuna"
    with pytest.raises(InvalidOptionsError, match="no instruct template"):
        story.story_settings(ctx, "tiny", {}, template="Nope", owner="erin")
