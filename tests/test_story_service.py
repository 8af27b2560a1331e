"""Story use cases with a scripted fake model: continue, stop, retry, undo/redo, edits,
recovery after a crash (snapshots, fork, export/import: test_story_archive.py)."""

from __future__ import annotations

import threading

import pytest

from generators.base import InvalidOptionsError
from storage import repository as repo
from webui.services import story as svc

OWNER = "local"


def settings(ctx, model: str = "fake", **levers):  # type: ignore[no-untyped-def]
    return svc.story_settings(ctx, model, {"max_new_tokens": 64, "seed": 3}, **levers)


def last(it):  # type: ignore[no-untyped-def]
    out = None
    for view in it:
        out = view
    return out


@pytest.fixture
def ctx(make_ctx):  # type: ignore[no-untyped-def]
    return make_ctx({"fake": {"words": 4}, "slow": {"words": 400, "delay_s": 0.01}, "broken": {"fail_after": 2}})


def new_story(ctx, opening: str = "Once upon a time", **levers):  # type: ignore[no-untyped-def]
    return svc.create_story(ctx, OWNER, "Tale", settings(ctx, **levers), opening)


def test_continue_streams_into_the_story_and_records_a_generation(ctx) -> None:
    story = new_story(ctx)
    views = [v for v in svc.continue_story(ctx, OWNER, story.id, settings(ctx)) if not v.loading]  # after the load
    assert views[0].passages[-1].status == "streaming" and len(views) > 3
    done = views[-1]
    assert [p.author for p in done.passages] == ["user", "model"]
    assert done.passages[-1].status == "ok" and done.passages[-1].text.startswith(" w0(")  # joined with a space
    assert done.text == svc.get_story(ctx, OWNER, story.id).text
    with ctx.store.begin() as s:
        gens = repo.generations_of(s, OWNER, story.id)
        assert len(gens) == 1 and gens[0].outcome == "ok" and gens[0].seed == 3 and gens[0].params["max_new_tokens"] == 64
        assert gens[0].completion_tokens == 4 and gens[0].tokens_per_s
    ctx_report = done.last_context
    assert ctx_report["mode"] == "instruct" and ctx_report["parts"][-1]["kind"] == "story"
    assert "Once upon a time" in ctx_report["sent"][-1]["content"]


def test_continue_with_the_writers_text_adds_it_first(ctx) -> None:
    story = new_story(ctx)
    done = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx), text="the end came."))
    assert [p.author for p in done.passages] == ["user", "user", "model"]
    assert done.text.startswith("Once upon a time the end came.")
    # Undo removes the continuation, then the writer's text: two edits
    assert svc.undo(ctx, OWNER, story.id).text == "Once upon a time the end came."
    assert svc.undo(ctx, OWNER, story.id).text == "Once upon a time"


def test_settings_are_remembered_per_story(ctx) -> None:
    story = new_story(ctx, memory="Mara is a thief.", authors_note="Keep it short.", an_depth=1,
                      world_info=[["dragon, wyrm", "Dragons hoard books."]])  # fmt: skip
    stored = svc.get_story(ctx, OWNER, story.id).settings
    back = svc.settings_from_json(ctx, stored)
    assert back.levers.memory == "Mara is a thief." and back.levers.an_depth == 1
    assert back.levers.world_info[0].keys == ("dragon", "wyrm") and back.params.seed == 3


def test_levers_reach_the_model(ctx) -> None:
    story = new_story(ctx, "The wyrm woke.\nIt was hungry.\n", memory="Mara is a thief.",
                      authors_note="Dark tone.", an_depth=1, world_info=[["wyrm", "Wyrms eat gold."], ["elf", "Elves sing."]])
    done = last(svc.continue_story(ctx, OWNER, story.id, svc.settings_from_json(ctx, story.settings)))
    system, user = (m["content"] for m in done.last_context["sent"])
    assert "Mara is a thief." in system and "Wyrms eat gold." in system and "Elves" not in system
    assert user == "The wyrm woke.\n[Author's note: Dark tone.]\nIt was hungry.\n"


def test_a_model_that_continues_its_own_turn_gets_the_story_as_that_turn(ctx, monkeypatch) -> None:
    """An instruct model that can leave its turn open (CAP_CONTINUE_TURN) writes on from the story as its own
    words instead of answering it as a user's message; the passage joins the story as usual."""
    from dataclasses import replace

    from generators.base import CAP_CONTINUE_TURN

    fake = type(ctx.registry.get("fake"))
    monkeypatch.setattr(fake, "info", replace(fake.info, capabilities=fake.info.capabilities | {CAP_CONTINUE_TURN}))
    story = new_story(ctx, memory="Mara is a thief.")
    done = last(svc.continue_story(ctx, OWNER, story.id, svc.settings_from_json(ctx, story.settings)))
    sent = done.last_context["sent"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant"] and "Mara is a thief." in sent[0]["content"]
    assert sent[-1]["content"] == "Once upon a time" and done.last_context["rendered"].endswith("Assistant: Once upon a time")
    assert done.passages[-1].text.startswith(" w0(")


def test_base_model_gets_plain_text(ctx, monkeypatch) -> None:
    monkeypatch.setattr(type(ctx.registry.get("fake")), "supports_chat", lambda self: False)
    story = new_story(ctx, memory="Mara is a thief.")
    done = last(svc.continue_story(ctx, OWNER, story.id, svc.settings_from_json(ctx, story.settings)))
    assert done.last_context["mode"] == "completion"
    assert done.last_context["sent"] == [{"role": "prompt", "content": "Mara is a thief.\nOnce upon a time"}]
    assert done.passages[-1].text.startswith("w0(")  # a base model's text is appended verbatim


def test_retry_keeps_alternatives_to_flip_between(ctx) -> None:
    story = new_story(ctx)
    first = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx))).passages[-1]
    second = last(svc.retry(ctx, OWNER, story.id, settings(ctx, model="slow"))).passages[-1]
    assert second.id != first.id and (second.version, second.versions) == (2, 2)
    view = svc.get_story(ctx, OWNER, story.id)
    assert len(view.passages) == 2 and view.passages[-1].id == second.id
    flipped = svc.switch_alternative(ctx, OWNER, story.id, -1)
    assert flipped.passages[-1].id == first.id and flipped.passages[-1].version == 1
    third = last(svc.retry(ctx, OWNER, story.id, settings(ctx))).passages[-1]
    assert third.versions == 3
    # undo walks back through the flip and the retries
    assert svc.undo(ctx, OWNER, story.id).passages[-1].id == first.id
    assert svc.undo(ctx, OWNER, story.id).passages[-1].id == second.id
    assert svc.redo(ctx, OWNER, story.id).passages[-1].id == first.id


def test_retry_needs_a_continuation(ctx) -> None:
    story = new_story(ctx)
    with pytest.raises(InvalidOptionsError, match="does not end with a continuation"):
        last(svc.retry(ctx, OWNER, story.id, settings(ctx)))


def test_undo_redo_and_a_new_edit_drops_the_redo_steps(ctx) -> None:
    story = new_story(ctx)
    a = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx)))
    b = svc.write(ctx, OWNER, story.id, "Then")
    assert b.can_undo and not b.can_redo
    assert svc.undo(ctx, OWNER, story.id).text == a.text
    back = svc.undo(ctx, OWNER, story.id)
    assert back.text == "Once upon a time" and back.can_redo
    with pytest.raises(InvalidOptionsError, match="Nothing to undo"):
        svc.undo(ctx, OWNER, story.id)
    assert svc.redo(ctx, OWNER, story.id).text == a.text
    c = svc.write(ctx, OWNER, story.id, "Instead")
    assert not c.can_redo and c.text == a.text + "Instead"  # the fake ends its text with a space
    with pytest.raises(InvalidOptionsError, match="Nothing to redo"):
        svc.redo(ctx, OWNER, story.id)


def test_hand_edit_is_a_new_version_undo_restores(ctx) -> None:
    story = new_story(ctx)
    done = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx)))
    model_passage = done.passages[-1]
    edited = svc.edit_passage(ctx, OWNER, story.id, model_passage.id, " and it rained.")
    assert edited.text == "Once upon a time and it rained." and edited.passages[-1].author == "model"
    assert svc.undo(ctx, OWNER, story.id).text == done.text
    removed = svc.edit_passage(ctx, OWNER, story.id, model_passage.id, "")
    assert removed.text == "Once upon a time"
    with pytest.raises(InvalidOptionsError, match="not part of the story"):
        svc.edit_passage(ctx, OWNER, story.id, "nope", "x")


def test_stop_keeps_what_was_written(ctx) -> None:
    story = new_story(ctx)
    cancel = threading.Event()
    shown = ""
    for view in svc.continue_story(ctx, OWNER, story.id, settings(ctx, model="slow"), cancel=cancel):
        shown = view.passages[-1].text
        if len(shown) > 40:
            cancel.set()
    final = svc.get_story(ctx, OWNER, story.id)
    assert final.passages[-1].status == "cancelled" and final.passages[-1].text == shown
    assert "Stopped after" in view.notice


def test_failure_keeps_partial_text_and_empty_output_leaves_story_unchanged(ctx, make_ctx) -> None:
    story = new_story(ctx)
    with pytest.raises(Exception, match="broke on purpose"):
        last(svc.continue_story(ctx, OWNER, story.id, settings(ctx, model="broken")))
    view = svc.get_story(ctx, OWNER, story.id)
    assert view.passages[-1].status == "error" and view.passages[-1].text.startswith(" w0(")
    cancel = threading.Event()
    cancel.set()  # stopped before the first word: nothing to keep
    before = svc.undo(ctx, OWNER, story.id)
    done = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx), cancel=cancel))
    assert done.text == before.text and "wrote nothing" in done.notice


def test_bad_input_is_refused_with_a_message(ctx) -> None:
    empty = svc.create_story(ctx, OWNER, "Empty", settings(ctx))
    with pytest.raises(InvalidOptionsError, match="story is empty"):
        last(svc.continue_story(ctx, OWNER, empty.id, settings(ctx)))
    with pytest.raises(InvalidOptionsError, match="depth must be between 0 and 100"):
        settings(ctx, an_depth=500)
    with pytest.raises(InvalidOptionsError, match="has no keywords"):
        settings(ctx, world_info=[["", "orphan lore"]])
    story = new_story(ctx)
    huge = settings(ctx, memory="word " * 9_990)  # the fake model's window is 10,000 tokens (≈4 chars each)
    with pytest.raises(InvalidOptionsError, match="Shorten the memory"):
        last(svc.continue_story(ctx, OWNER, story.id, huge))
    assert svc.get_story(ctx, OWNER, story.id).text == "Once upon a time"  # nothing half-done
    with pytest.raises(InvalidOptionsError, match="Type some text"):
        svc.write(ctx, OWNER, story.id, "   ")
    with pytest.raises(InvalidOptionsError, match="Open or create a story"):
        svc.undo(ctx, OWNER, "")


def test_crash_mid_stream_is_recovered_as_interrupted(ctx) -> None:
    story = new_story(ctx)
    stream = svc.continue_story(ctx, OWNER, story.id, settings(ctx, model="slow"))
    for view in stream:
        if len(view.passages[-1].text) > 30:
            break
    # simulate a crash: the generator is never finished (no GeneratorExit reaches it), the row says streaming
    with ctx.store.begin() as s:
        p = repo.story_passages(s, repo.get_session(s, OWNER, story.id))[-1]
        p.status = "streaming"
        gen = s.get(repo.Generation, p.generation_id)
        gen.outcome = "running"
        saved = p.text
    from storage import Store

    restarted = Store(ctx.store.url, ctx.store.data_dir)  # the next process: its own instance id
    assert ctx.store.recover_interrupted() == 0  # a live instance's own generations are never touched
    assert restarted.recover_interrupted() == 1
    restarted.close()
    after = svc.get_story(ctx, OWNER, story.id)
    assert after.passages[-1].status == "interrupted" and after.passages[-1].text == saved
    stream.close()


def test_snapshots_fork_rename_delete_search(ctx) -> None:
    story = new_story(ctx)
    draft = last(svc.continue_story(ctx, OWNER, story.id, settings(ctx)))
    snaps = svc.save_snapshot(ctx, OWNER, story.id, "draft 1")
    assert [s.name for s in snaps] == ["draft 1"] and snaps[0].chars == len(draft.text)
    svc.write(ctx, OWNER, story.id, "A twist!")
    restored = svc.restore_snapshot(ctx, OWNER, story.id, snaps[0].id)
    assert restored.text == draft.text
    assert svc.undo(ctx, OWNER, story.id).text.endswith("A twist!")
    fork = svc.duplicate_story(ctx, OWNER, story.id)
    assert fork.id != story.id and fork.title == "Tale (fork)" and fork.text.endswith("A twist!")
    svc.write(ctx, OWNER, fork.id, "Only in the fork.")
    assert "Only in the fork" not in svc.get_story(ctx, OWNER, story.id).text
    svc.rename_story(ctx, OWNER, story.id, "Original")
    assert {s.title for s in svc.list_stories(ctx, OWNER)} == {"Original", "Tale (fork)"}
    assert [s.title for s in svc.list_stories(ctx, OWNER, "only in the")] == ["Tale (fork)"]
    svc.delete_story(ctx, OWNER, story.id)
    assert [s.title for s in svc.list_stories(ctx, OWNER)] == ["Tale (fork)"]
    with pytest.raises(Exception, match="was found"):
        svc.get_story(ctx, OWNER, story.id)


def test_token_counts_are_cached_across_continues(ctx) -> None:
    story = new_story(ctx, "".join(f"Paragraph {i} of the story.\n" for i in range(50)))
    last(svc.continue_story(ctx, OWNER, story.id, settings(ctx)))
    misses = ctx.token_counts.misses
    last(svc.continue_story(ctx, OWNER, story.id, settings(ctx)))
    assert ctx.token_counts.misses - misses <= 3  # only the new text (and the changed last line)
