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


def test_the_contract_refuses_a_logit_bias_the_plugin_cannot_apply_or_whose_ids_it_lacks() -> None:
    biased = TextRequest(prompt="hi", params=SamplingParams(logit_bias={5: -100}))
    with pytest.raises(base.InvalidOptionsError, match="cannot apply logit_bias") as info:
        next(loaded(Scripted("s")).stream(biased))  # it does not declare CAP_LOGIT_BIAS
    assert info.value.param == "logit_bias"

    class Biasing(Scripted):
        info = GeneratorInfo("biasing", "text", "test", "scripted tokens",
                             frozenset({"stream", base.CAP_LOGIT_BIAS}), SamplingParams, StrictModel)
        vocabulary_size = 5  # ids 0 … 4

    with pytest.raises(base.InvalidOptionsError, match="5 is not a token id of b.*0 to 4") as info:
        next(loaded(Biasing("b")).stream(biased))
    assert info.value.param == "logit_bias"
    ok = TextRequest(prompt="hi", params=SamplingParams(logit_bias={4: -100}))
    assert "".join(c.text for c in loaded(Biasing("b")).stream(ok)) == "abc"


def test_sampling_params_bound_logit_bias_like_openai() -> None:
    assert SamplingParams(logit_bias={"42": -100}).logit_bias == {42: -100.0}  # JSON keys are strings
    assert SamplingParams(logit_bias={7: 2.5}).model_dump(mode="json")["logit_bias"] == {"7": 2.5}
    for bad in ({1: 101}, {1: -100.5}, {-1: 1}, {i: 1 for i in range(base.MAX_LOGIT_BIAS + 1)}):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias=bad)
