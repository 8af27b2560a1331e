"""The text contract's template method: `TextGenerator.stream` times a plugin's `_stream_chunks` and
puts the stats on its last chunk, so time to first token and tokens/s mean one thing for every plugin."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from generators import base
from generators.base import (
    GenerationStats,
    GeneratorInfo,
    SamplingParams,
    StreamClock,
    StrictModel,
    TextChunk,
    TextGenerator,
    TextRequest,
)


class Scripted(TextGenerator):
    """Samples the tokens it is told (None: the end-of-text token) and reports each to the clock."""

    info = GeneratorInfo("scripted", "text", "test", "scripted tokens", frozenset({"stream"}), SamplingParams,
                         StrictModel)
    script: tuple[str | None, ...] = ("a", "b", "c")
    closed = False

    def _load(self, progress) -> None:  # type: ignore[no-untyped-def]
        pass

    def _unload(self) -> None:
        pass

    def _stream_chunks(self, request: TextRequest, cancel: threading.Event | None,
                       clock: StreamClock) -> Iterator[TextChunk]:
        clock.begin(prompt_tokens=7, seed=42, dropped_messages=1)
        try:
            for token in self.script:
                clock.token(0 if token is None else 1)
                if token is None:
                    break
                yield TextChunk(token)
            yield TextChunk("", finish_reason="stop")
        finally:
            type(self).closed = True


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """perf_counter as seen by the contract: 10, 11, 12, … (one second a call)."""
    counter = itertools.count(10)
    monkeypatch.setattr(base.time, "perf_counter", lambda: float(next(counter)))


REQUEST = TextRequest(prompt="hi")


def loaded(gen: Scripted) -> Scripted:
    gen.load()
    return gen


def test_the_contract_computes_time_to_first_token_and_tokens_per_second(ticks: None) -> None:
    chunks = list(loaded(Scripted("s")).stream(REQUEST))
    assert "".join(c.text for c in chunks) == "abc" and chunks[-1].finish_reason == "stop"
    assert [c.stats for c in chunks[:-1]] == [None] * 3
    # started at 10, first token at 11, tokens at 11 (first), stats taken at 12: 3 tokens over 1 s
    assert chunks[-1].stats == GenerationStats(prompt_tokens=7, completion_tokens=3, seed=42,
                                               time_to_first_token_s=1.0, tokens_per_s=3.0, dropped_messages=1)


def test_the_end_of_text_token_ends_the_wait_but_is_not_counted(ticks: None) -> None:
    gen = loaded(Scripted("s"))
    gen.script = (None,)
    (last,) = gen.stream(REQUEST)
    assert last.stats is not None
    assert last.stats.completion_tokens == 0 and last.stats.time_to_first_token_s == 1.0
    assert last.stats.tokens_per_s is None  # nothing generated: no rate


def test_no_token_no_timing(ticks: None) -> None:
    gen = loaded(Scripted("s"))
    gen.script = ()
    (last,) = gen.stream(REQUEST)
    assert last.stats is not None and last.stats.time_to_first_token_s is None and last.stats.tokens_per_s is None


def test_a_plugins_own_stats_are_kept_and_a_reader_that_stops_closes_the_plugins_generator() -> None:
    own = GenerationStats(1, 1, 0, 0.5, 2.0)

    class Own(Scripted):
        def _stream_chunks(self, request, cancel, clock):  # type: ignore[no-untyped-def]
            yield TextChunk("x", finish_reason="stop", stats=own)

    assert next(iter(loaded(Own("o")).stream(REQUEST))).stats is own
    Scripted.closed = False
    stream = loaded(Scripted("s")).stream(REQUEST)
    assert next(stream).text == "a"
    stream.close()
    assert Scripted.closed  # the plugin's finally ran: a batched row would be freed now


def test_a_plugin_that_implements_no_stream_says_so() -> None:
    class Empty(Scripted):
        _stream_chunks = TextGenerator._stream_chunks

    with pytest.raises(NotImplementedError, match="scripted"):
        list(loaded(Empty("e")).stream(REQUEST))
