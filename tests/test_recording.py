"""`recorded_generation`, the one lifecycle of chat, story, arena, API and image generations: the row's
outcome on every path (ok, cancelled, error, out of memory), the caller's `on_end` before the row is
finished, the model held meanwhile, and out-of-memory told by type."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select

from generators.base import (
    BusyError,
    ChatMessage,
    GenerationCancelledError,
    GenerationFailedError,
    InvalidOptionsError,
    OutOfMemoryError,
    TextRequest,
    is_out_of_memory,
)
from storage.models import Generation
from webui.services.recording import recorded_generation


def rows(ctx: Any) -> list[Generation]:
    with ctx.store.begin() as s:
        rows = list(s.scalars(select(Generation).order_by(Generation.started_at)))
        s.expunge_all()
        return rows


def test_an_ok_generation_records_its_fields_after_the_callers_on_end(make_ctx: Any) -> None:
    ctx = make_ctx()
    started: list[str] = []
    ended: list[tuple[str, str]] = []
    with recorded_generation(ctx, "ann", "fake", {"k": 1}, modality="text", seed=7, source="api",
                             on_start=started.append,
                             on_end=lambda outcome: ended.append((outcome, rows(ctx)[0].outcome))) as rec:
        assert started == [rec.id] and rec.generator is ctx.registry.get("fake") and rec.generator.loaded
        with pytest.raises(BusyError):
            ctx.registry.unload("fake")  # held for the body
        rec.fields = {"prompt_tokens": 3, "completion_tokens": 5}
    assert ended == [("ok", "running")]  # the caller settles its output before the row is finished
    (row,) = rows(ctx)
    assert (row.id, row.outcome, row.seed, row.source, row.params, row.prompt_tokens, row.completion_tokens,
            row.error) == (started[0], "ok", 7, "api", {"k": 1}, 3, 5, None)
    assert row.finished_at is not None


@pytest.mark.parametrize("stop", [GenerationCancelledError("Stopped between two steps; nothing was saved."),
                                  GeneratorExit()])
def test_a_stop_is_recorded_as_cancelled_and_re_raised(make_ctx: Any, stop: BaseException) -> None:
    ctx = make_ctx()
    ended: list[str] = []
    with pytest.raises(type(stop)), recorded_generation(ctx, "ann", "fake", {}, modality="text", on_end=ended.append):
        raise stop
    (row,) = rows(ctx)
    assert (row.outcome, row.error, ended) == ("cancelled", None, ["cancelled"])


def test_a_crash_is_recorded_with_a_message_and_raised_as_a_studio_error(make_ctx: Any) -> None:
    ctx = make_ctx()
    with pytest.raises(GenerationFailedError, match="Image generation failed: kernel exploded") as caught, \
            recorded_generation(ctx, "ann", "fake", {}, modality="text", what="Image generation"):
        raise RuntimeError("kernel exploded")
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert rows(ctx)[0].outcome == "error" and rows(ctx)[0].error == "Image generation failed: kernel exploded"
    assert ctx.registry.get("fake").loaded  # a crash is not a reason to unload


def test_out_of_memory_unloads_the_model_and_says_what_to_change(make_ctx: Any) -> None:
    ctx = make_ctx()
    with pytest.raises(OutOfMemoryError, match="fake ran out of memory .*unloaded.*smaller batch"), \
            recorded_generation(ctx, "ann", "fake", {}, modality="text"):
        raise MemoryError("80 GiB")
    assert not ctx.registry.get("fake").loaded
    (row,) = rows(ctx)
    assert row.outcome == "error" and "ran out of memory" in row.error


def test_the_declared_modality_decides_and_a_refusal_is_recorded(make_ctx: Any) -> None:
    ctx = make_ctx()
    with pytest.raises(InvalidOptionsError, match="'fake' is not an image model; pick an image model"), \
            recorded_generation(ctx, "ann", "fake", {}, modality="image"):
        pytest.fail("the body must not run")
    assert rows(ctx)[0].outcome == "error"


def test_out_of_memory_is_told_by_type_not_by_name() -> None:
    import torch

    assert is_out_of_memory(MemoryError()) and is_out_of_memory(OutOfMemoryError("x"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))

    class OutOfMemoryErrorLookalike(RuntimeError):
        pass

    OutOfMemoryErrorLookalike.__name__ = "OutOfMemoryError"
    assert not is_out_of_memory(OutOfMemoryErrorLookalike("a name alone"))
    assert not is_out_of_memory(RuntimeError("out of memory"))


def test_an_image_that_runs_out_of_memory_saves_nothing_and_unloads(make_ctx: Any, monkeypatch: Any) -> None:
    from webui.services import images as svc

    ctx = make_ctx(images=True)
    gan = ctx.registry.load("gan-mnist32")

    def boom(*_args: Any) -> Any:
        raise MemoryError("fake allocation failed")

    monkeypatch.setattr(gan, "_sample", boom)
    with pytest.raises(OutOfMemoryError, match="gan-mnist32 ran out of memory"):
        svc.generate(ctx, "ann", "gan-mnist32", 3, 1, 2)
    assert not gan.loaded and svc.gallery(ctx, "ann").total == 0
    assert not list((ctx.store.data_dir / "images").glob("*.png"))
    assert [(r.generator, r.outcome) for r in rows(ctx)] == [("gan-mnist32", "error")]


def test_a_cancelled_stream_keeps_its_partial_text_as_cancelled(make_ctx: Any) -> None:
    from webui.services.generation import stream_text

    ctx = make_ctx({"fake": {"words": 50}})
    saved: list[tuple[str, str | None]] = []
    stream = stream_text(ctx, "ann", "fake", TextRequest(messages=(ChatMessage("user", "hi"),)),
                         save=lambda text, status: saved.append((text, status)), cancel=threading.Event())
    for _ in range(3):
        next(stream)
    stream.close()  # the reader left (a closed page, Stop on the API)
    assert saved[-1][1] == "cancelled" and saved[-1][0].count("w") == 3
    assert rows(ctx)[0].outcome == "cancelled"
