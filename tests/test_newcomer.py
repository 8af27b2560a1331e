"""A newcomer's first ten minutes (issue 24): a first reply that says what it waits for, status that
follows the model, counters and labels that mean what they say. Fast: fake models built here."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from generators.base import LoadFailedError
from storage.models import LOCAL_OWNER as OWNER
from tests.conftest import make_fake_text_plugin, wait_until
from webui.services import chat as chat_svc
from webui.services import story as story_svc
from webui.services.loading import describe_stage, wait_until_loaded
from webui.tabs.chat_view import alternatives_label, chatbot_messages, is_writing
from webui.tabs.story_view import story_html

STAGES = (
    "Converting SmolLM2-135M-Instruct.Q4_1.gguf once into a safetensors cache (about 15 s)…",
    "Packing m weights as 4-bit groups…",
    "Loading the C++ decoding loop (built once, ~20 s)…",
)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    from webui.services import loading

    monkeypatch.setattr(loading, "POLL_S", 0.05)


@pytest.fixture
def fake_plugin() -> type:
    """The fake text model with a load that takes a while and reports its stages (as the default
    model's first load does: GGUF conversion, int4 packing, the C++ loop), or fails when told to."""
    base = make_fake_text_plugin()

    class SlowLoading(base):  # type: ignore[misc, valid-type]
        def _load(self, progress: Any) -> None:
            type(self).load_count += 1
            if self.options.fail_after == -1:
                raise RuntimeError("the weights file is truncated")
            for stage in STAGES if self.options.memory_mb == 100 else ():
                progress(stage)
                time.sleep(0.3)

    return SlowLoading


def settings(model: str = "fake") -> chat_svc.ReplySettings:
    return chat_svc.ReplySettings(model, chat_svc.sampling_params({"seed": 1, "max_new_tokens": 8}))


# ------------------------------------------------------------------ item 1: the first reply


def test_describe_stage_drops_the_plugins_own_time_guesses() -> None:
    assert describe_stage(STAGES[0]) == "Converting SmolLM2-135M-Instruct.Q4_1.gguf once into a safetensors cache…"
    assert describe_stage(STAGES[2]) == "Loading the C++ decoding loop (built once)…"
    assert describe_stage(STAGES[1]) == STAGES[1]


def test_first_reply_shows_the_load_stages_where_the_reply_will_be(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 3}})
    view = chat_svc.add_user_message(ctx, OWNER, None, "hello", settings())
    views = list(chat_svc.stream_reply(ctx, OWNER, view.id, settings()))
    loading = [v for v in views if v.loading]
    stages = {v.loading.split(" · ")[0] for v in loading}
    assert {"Converting SmolLM2-135M-Instruct.Q4_1.gguf once into a safetensors cache…",
            "Loading the C++ decoding loop (built once)…"} <= stages  # fmt: skip
    assert all(v.loading.endswith(" s") for v in loading)  # with the time spent so far
    assert views.index(loading[-1]) < next(i for i, v in enumerate(views) if v.messages[-1].content)
    # the page shows the stage in the reply's place, with a spinner, and nothing to rate yet
    shown = chatbot_messages(loading[-1])
    assert shown[-1]["metadata"]["status"] == "pending" and shown[-1]["metadata"]["title"] == loading[-1].loading
    assert is_writing(loading[-1]) and not is_writing(views[-1])
    assert views[-1].messages[-1].status == "ok" and not views[-1].loading
    # a second reply does not wait for anything
    chat_svc.add_user_message(ctx, OWNER, view.id, "again", settings())
    assert not any(v.loading for v in chat_svc.stream_reply(ctx, OWNER, view.id, settings()))


def test_a_failed_load_marks_the_reply_failed_instead_of_leaving_it_writing(make_ctx) -> None:
    ctx = make_ctx({"fake": {"fail_after": -1}})
    view = chat_svc.add_user_message(ctx, OWNER, None, "hello", settings())
    with pytest.raises(LoadFailedError, match="truncated"):
        list(chat_svc.stream_reply(ctx, OWNER, view.id, settings()))
    after = chat_svc.get_chat(ctx, OWNER, view.id)
    assert after.messages[-1].status == "error"
    assert chatbot_messages(after)[-1]["content"] == "*(failed)*"


def test_two_requests_wait_for_one_load_and_the_status_line_can_see_it(make_ctx, fake_plugin) -> None:
    ctx = make_ctx({"fake": {}})
    seen: list[Any] = []
    other = threading.Thread(target=lambda: seen.extend(wait_until_loaded(ctx, "fake")))
    other.start()
    wait_until(lambda: ctx.loads.progress("fake") is not None, "the status line to show the load")  # while loading
    mine = list(wait_until_loaded(ctx, "fake"))
    other.join()
    assert mine and seen and fake_plugin.load_count == 1
    assert ctx.loads.progress("fake") is None and ctx.registry.get("fake").loaded


def test_stop_while_loading_leaves_the_load_to_finish(make_ctx) -> None:
    ctx = make_ctx({"fake": {}})
    view = chat_svc.add_user_message(ctx, OWNER, None, "hello", settings())
    stream = chat_svc.stream_reply(ctx, OWNER, view.id, settings())
    next(stream), next(stream)  # the reply exists and the load has started
    stream.close()  # the page went away / Stop
    assert chat_svc.get_chat(ctx, OWNER, view.id).messages[-1].status == "cancelled"
    deadline = time.monotonic() + 10
    while not ctx.registry.get("fake").loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctx.registry.get("fake").loaded


def test_the_stop_button_while_loading_ends_the_reply_at_once(make_ctx) -> None:
    """Stop sets the session's cancel event; the reply must end then, not after the whole load."""
    ctx = make_ctx({"fake": {}})
    view = chat_svc.add_user_message(ctx, OWNER, None, "hello", settings())
    cancel = threading.Event()
    stream = chat_svc.stream_reply(ctx, OWNER, view.id, settings(), cancel=cancel)
    next(stream), next(stream)  # the reply exists and the load has started
    cancel.set()
    rest = list(stream)
    assert not ctx.registry.get("fake").loaded  # ended before the load did (it takes 0.9 s)
    assert rest[-1].messages[-1].status == "cancelled" and "keeps loading" in rest[-1].notice
    assert chat_svc.get_chat(ctx, OWNER, view.id).messages[-1].status == "cancelled"
    assert chatbot_messages(rest[-1])[-1]["content"] == "*(stopped)*"
    deadline = time.monotonic() + 10
    while not ctx.registry.get("fake").loaded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctx.registry.get("fake").loaded  # and the load went on for the next message


# ------------------------------------------------------------------ item 7: chat counters


def test_chat_counters_count_replies_among_replies(make_ctx) -> None:
    ctx = make_ctx({"fake": {"words": 2, "memory_mb": 1}})
    cid = None
    for text in ("one", "two", "three"):
        cid = chat_svc.add_user_message(ctx, OWNER, cid, text, settings()).id
        list(chat_svc.stream_reply(ctx, OWNER, cid, settings()))
    chat_svc.prepare_regenerate(ctx, OWNER, cid)
    view = list(chat_svc.stream_reply(ctx, OWNER, cid, settings()))[-1]
    last, second_user = view.messages[-1], view.messages[2]
    assert alternatives_label(view, last.id) == "Reply 3 · version **2 of 2**"  # not "Reply 6"
    assert alternatives_label(view, second_user.id).startswith("Your message 2 · the only version")
    writing = list(chat_svc.stream_reply(ctx, OWNER, chat_svc.add_user_message(ctx, OWNER, cid, "4", settings()).id,
                                         settings()))[0]  # fmt: skip
    assert alternatives_label(writing, writing.messages[-1].id) == "Reply 4: being written…"


# ------------------------------------------------------------------ item 6: the story


@pytest.fixture
def story_ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"fake": {"words": 3}})


def story_settings(ctx: Any) -> Any:
    return story_svc.story_settings(ctx, "fake", {"max_new_tokens": 16, "seed": 3})


def test_story_continuation_shows_the_load_in_the_document(story_ctx) -> None:
    story = story_svc.create_story(story_ctx, OWNER, "Tale", story_settings(story_ctx), "It was a dark night.")
    views = list(story_svc.continue_story(story_ctx, OWNER, story.id, story_settings(story_ctx)))
    waiting = [v for v in views if v.loading]
    assert any("Converting" in v.loading for v in waiting) and "C++" in waiting[-1].loading
    html = story_html(waiting[-1])
    assert 'id="story-loading"' in html and "Waiting for the model" in html and "It was a dark night." in html
    assert 'id="story-loading"' not in story_html(views[-1])


def test_story_tells_passages_apart_and_undo_names_what_it_undoes(story_ctx) -> None:
    ctx = story_ctx
    story = story_svc.create_story(ctx, OWNER, "Tale", story_settings(ctx), "It was a dark night.")
    list(story_svc.continue_story(ctx, OWNER, story.id, story_settings(ctx)))
    list(story_svc.continue_story(ctx, OWNER, story.id, story_settings(ctx)))
    view = list(story_svc.retry(ctx, OWNER, story.id, story_settings(ctx)))[-1]
    html = story_html(view)
    # the writer's text, then two model passages in alternating shades, numbered as the labels name them
    assert html.count('class="story-user" data-n') == 1
    assert 'class="story-model story-model-a" data-n="2"' in html and 'class="story-model story-model-b" data-n="3"' in html
    assert view.undo_action == "retry" and view.redo_action == ""
    flipped = story_svc.switch_alternative(ctx, OWNER, story.id, -1)
    assert flipped.undo_action == "alternative"
    undone = story_svc.undo(ctx, OWNER, story.id)
    assert undone.notice == "↶ Undid the switch to another version (◀ ▶). Undo again: the retry."
    assert undone.undo_action == "retry" and undone.redo_action == "alternative"


# ------------------------------------------------------------------ item 5: Models → Apply


@pytest.fixture
def lm_ctx(make_ctx, tiny_model_dir):  # type: ignore[no-untyped-def]
    """A context with a tiny real transformers model (random weights), loaded and working."""
    from generators.registry import ModelSpec
    from generators.text.transformers_lm import TransformersLM

    ctx = make_ctx({"fake": {"memory_mb": 1}})
    ctx.registry.plugins["transformers"] = TransformersLM
    ctx.registry.add(ModelSpec("tiny", "transformers", {"source": str(tiny_model_dir), "max_batch": 1}))
    ctx.registry.load("tiny")
    return ctx


def test_apply_refuses_an_impossible_device_and_keeps_the_working_model(lm_ctx, monkeypatch) -> None:
    import torch

    from webui.services.model_options import apply_options

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    working = lm_ctx.registry.get("tiny")
    with pytest.raises(LoadFailedError, match="no CUDA GPU"):
        apply_options(lm_ctx, "tiny", quantization="none", device="cuda")
    assert lm_ctx.registry.get("tiny") is working and working.loaded and working.options.device == "auto"
    # the same settings again change nothing; possible ones reload at once and say so
    assert not apply_options(lm_ctx, "tiny", quantization="none", device="auto").changed
    applied = apply_options(lm_ctx, "tiny", quantization="dynamic-int8", device="cpu")
    assert applied.loaded and lm_ctx.registry.get("tiny").loaded and "is loaded with quantization=dynamic-int8" in applied.message


def test_apply_puts_the_old_options_back_when_the_new_load_fails(lm_ctx, monkeypatch) -> None:
    from generators.text.transformers_lm import TransformersLM
    from webui.services.model_options import apply_options

    real_load = TransformersLM._load

    def picky(self: Any, progress: Any) -> None:
        if self.options.quantization == "dynamic-int8":
            raise LoadFailedError("the int8 kernels crashed")
        real_load(self, progress)

    monkeypatch.setattr(TransformersLM, "_load", picky)
    with pytest.raises(LoadFailedError, match="back on quantization=none, device=auto and loaded as before"):
        apply_options(lm_ctx, "tiny", quantization="dynamic-int8", device="cpu")
    gen = lm_ctx.registry.get("tiny")
    assert gen.loaded and gen.options.quantization == "none"


# ------------------------------------------------------------------ items 3, 8, 9: page wiring


def test_page_wiring_rerun_message_survives_and_exports_are_one_step(make_ctx) -> None:
    from webui.app import build_app

    demo = build_app(make_ctx(images=True))
    fns = {d.api_name: d for d in demo.fns.values() if d.api_name}
    rerun_notice = fns["gallery_rerun"].outputs[-1]
    # opening the re-run's new copy (the id changes) must not overwrite the re-run's message
    assert rerun_notice not in fns["gallery_open"].outputs
    for name in ("export_markdown", "export_json", "story_export_md", "story_export_txt", "story_export_json"):
        (slot,) = fns[name].outputs
        assert type(slot).__name__ == "DownloadButton" and slot.visible == "hidden"
        followers = [d for d in demo.fns.values() if d.trigger_after == fns[name]._id]
        assert followers and "click()" in (followers[0].js or "")  # the browser download starts at once


def test_empty_lists_say_why() -> None:
    from webui.tabs import list_label

    assert list_label("chats", "  dragons ", 0) == "Chats: none match “dragons”"
    assert list_label("stories", "", 0) == "Stories: none yet"
    assert list_label("chats", "x", 3) == "Chats"


def test_an_8bit_reply_logs_the_bitsandbytes_cast_warning_once(tiny_model_dir, caplog) -> None:
    from generators.base import ChatMessage, SamplingParams, TextRequest
    from generators.text.transformers_lm import TransformersLM

    gen = TransformersLM("tiny8", {"source": str(tiny_model_dir), "quantization": "8bit", "max_batch": 1})
    gen.load()
    try:
        with caplog.at_level("WARNING"):
            request = TextRequest(messages=(ChatMessage("user", "hi"),), params=SamplingParams(max_new_tokens=6, seed=1))
            list(gen.stream(request))
            list(gen.stream(request))
    finally:
        gen.unload()
    cast = [r for r in caplog.records if r.name.startswith("bitsandbytes") and "will be cast" in r.getMessage()]
    assert len(cast) <= 1


# ------------------------------------------------------------------ item 10: the leaderboard


def test_leaderboard_says_when_there_are_too_few_votes_to_rank() -> None:
    from webui.services.arena import Standing
    from webui.tabs.evaluate import MIN_ROUNDS, board_plot, board_rows

    few = [Standing("a", 1031.0, 1031.0, 1031.0, 1, 1.0), Standing("b", 969.0, 969.0, 969.0, 1, 0.0)]
    rows = board_rows(few)
    assert [r[1] for r in rows] == ["—", "—"] and rows[0][2] == f"too few votes (1 of {MIN_ROUNDS})"
    enough = [Standing("a", 1060.0, 1010.0, 1110.0, MIN_ROUNDS, 4.0), Standing("c", 1000.0, 1000.0, 1000.0, 2, 1.0)]
    rows = board_rows(enough)
    assert rows[0] == ["a", 1060, "1010 – 1110", MIN_ROUNDS, 4.0] and rows[1][2].startswith("too few votes")
    assert board_plot(few).size[1] < board_plot(enough + enough).size[1]


# ------------------------------------------------------------------ item 2: defaults


def test_workspaces_start_with_repetition_control_on(make_ctx) -> None:
    from webui.app import build_app
    from webui.services import workspace_defaults

    demo = build_app(make_ctx())
    sliders = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Repetition penalty"]
    assert sorted(s.value for s in sliders) == sorted(
        [workspace_defaults.CHAT["repetition_penalty"], workspace_defaults.STORY["repetition_penalty"]])
    assert all(s.value > 1.0 for s in sliders)
