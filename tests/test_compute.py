"""The compute lane: one thread runs every plugin's tensor work (see generators/compute.py for why)."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path

import pytest
import torch

from generators.base import ChatMessage, ImageEnd, SamplingParams, TextRequest
from generators.compute import ComputeLane, in_fresh_thread, lane
from generators.image.plugin import GANPlugin
from generators.text.char_lstm import CharLSTM, CharLSTMConfig, build_network, save_char_lstm
from generators.text.transformers_lm import TransformersLM


def test_call_returns_raises_and_runs_on_the_lane_thread() -> None:
    own = ComputeLane("test-lane")
    assert own.call(lambda a, b=0: (threading.current_thread(), a + b), 1, b=2) == (own.thread, 3)
    with pytest.raises(KeyError, match="missing"):
        own.call(lambda: {}["missing"])
    # a job that calls the lane again runs inline instead of waiting for itself
    assert own.call(lambda: own.call(lambda: "nested")) == "nested"
    assert own.jobs_run == 3


def test_iterate_makes_each_item_on_the_lane_and_closes_an_abandoned_generator_there() -> None:
    own = ComputeLane("test-lane")
    made_on, closed_on = [], []

    def numbers():
        try:
            for i in range(100):
                made_on.append(threading.current_thread())
                yield i
        finally:
            closed_on.append(threading.current_thread())

    stream = own.iterate(numbers(), slice_s=0.0)  # one item per job
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert made_on == [own.thread] * 3 and closed_on == [own.thread]
    assert list(own.iterate(iter([4, 5]))) == [4, 5]
    before = own.jobs_run
    assert list(own.iterate(numbers(), slice_s=5.0)) == list(range(100))
    assert own.jobs_run - before == 2  # a fast generator: all of it in one slice, then its close


class Counter:
    """A stepper with `left` steps of work; records what ran when."""

    def __init__(self, own: ComputeLane, log: list[str]) -> None:
        self.own, self.log, self.left = own, log, 0

    def has_work(self) -> bool:
        return self.left > 0

    def tick(self) -> None:
        self.left -= 1
        self.log.append("step")
        time.sleep(0.002)

    def add(self, steps: int) -> None:
        self.left += steps
        self.own.wake()


def test_jobs_interleave_with_stepper_ticks_so_neither_starves() -> None:
    own = ComputeLane("test-lane")
    log: list[str] = []
    counter = Counter(own, log)
    own.add_stepper(counter)
    counter.add(50)
    time.sleep(0.01)
    own.call(log.append, "job")
    deadline = time.time() + 5
    while counter.has_work() and time.time() < deadline:
        time.sleep(0.01)
    assert log.count("step") == 50
    assert log.index("job") < 40  # the job ran between steps, not after all 50
    own.remove_stepper(counter)
    counter.add(3)
    time.sleep(0.05)
    assert log.count("step") == 50  # a removed stepper is not ticked


REQUEST = contextvars.ContextVar("request", default="none")


def test_jobs_and_fresh_threads_see_the_callers_context_variables() -> None:
    """Gradio finds a request's progress tracker through a context variable: a load or a job must see it."""
    own = ComputeLane("test-lane")
    token = REQUEST.set("req-1")
    try:
        assert own.call(REQUEST.get) == "req-1"
        assert in_fresh_thread(REQUEST.get) == "req-1"
    finally:
        REQUEST.reset(token)
    assert own.call(REQUEST.get) == "none"


def test_in_fresh_thread_returns_raises_and_leaves_no_thread_behind() -> None:
    seen = []
    assert in_fresh_thread(lambda: seen.append(threading.current_thread()) or 7) == 7
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(ValueError, match="bad"):
        in_fresh_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))


def _forward_threads(model: torch.nn.Module) -> list[threading.Thread]:
    """Threads that run the model (hooked on its input embedding: the lean decoding step skips the top module)."""
    threads: list[threading.Thread] = []
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model
    embedding.register_forward_pre_hook(lambda *_: threads.append(threading.current_thread()))
    return threads


@pytest.mark.parametrize("max_batch", [1, 4])
def test_every_forward_of_the_transformers_plugin_runs_on_the_lane(tiny_model_dir: Path, max_batch: int) -> None:
    """Loading happens in a thread that is gone afterwards; decoding (batched or alone) and scoring
    run on the lane, whichever request threads ask."""
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": max_batch})
    loaders: list[threading.Thread] = []
    original = gen._load
    gen._load = lambda progress: (loaders.append(threading.current_thread()), original(progress))[1]
    gen.load()
    assert loaders and loaders[0] is not threading.current_thread() and not loaders[0].is_alive()
    threads = _forward_threads(gen.model)
    request = TextRequest(messages=(ChatMessage("user", "Hi"),), params=SamplingParams(temperature=0, max_new_tokens=5))
    texts = []
    workers = [threading.Thread(target=lambda: texts.append(gen.generate(request)[0])) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(texts) == 3 and len(set(texts)) == 1
    gen.log_likelihood("Some text to score, long enough for a few tokens.")
    assert threads and set(threads) == {lane().thread}
    gen.unload()


def test_the_char_lstm_and_image_plugins_run_on_the_lane(tmp_path: Path) -> None:
    vocab = list("\n abcdefghijklmnopqrstuvwxyz")
    folder = save_char_lstm(tmp_path / "lstm", build_network(CharLSTMConfig(vocab_size=len(vocab), embed_dim=8, hidden=16,
                                                                             layers=1)), vocab, {})
    lstm = CharLSTM("lstm", {"weights": str(folder)})
    lstm.load()
    threads = _forward_threads(lstm.model)
    text, _ = lstm.generate(TextRequest(prompt="the ", params=SamplingParams(seed=1, max_new_tokens=20)))
    lstm.log_likelihood("the cat sat")
    assert len(text) == 20 and set(threads) == {lane().thread}

    gan = GANPlugin("gan", {"weights": "builtin:gan-mnist32"})
    gan.load()
    threads = _forward_threads(gan._model)
    gan.sample([ImageEnd(3, 1), ImageEnd(4, 2)], gan.info.params())
    assert set(threads) == {lane().thread}


def test_a_batched_stream_cannot_be_read_from_the_lane_itself(tiny_model_dir: Path) -> None:
    gen = TransformersLM("tiny", {"source": str(tiny_model_dir), "device": "cpu", "max_batch": 4})
    gen.load()
    request = TextRequest(prompt="Once", params=SamplingParams(temperature=0, max_new_tokens=3))
    with pytest.raises(RuntimeError, match="compute lane"):
        lane().call(gen.generate, request)  # would wait forever for a step only the lane can run
    assert gen.generate(request)[0]  # the lane is still alive
    gen.unload()


def test_the_lane_leaves_cpus_to_training_jobs_and_takes_them_back() -> None:
    """share_cpus(n) lowers the lane's torch threads by n (at least one stays) and share_cpus(0) restores
    them: a training job's OpenMP team and the lane's then do not fight over the same cores."""
    import torch

    lane = ComputeLane("share-test")
    own = lane.call(torch.get_num_threads)
    assert lane.share_cpus(1).result(5) == max(1, own - 1)
    assert lane.call(torch.get_num_threads) == max(1, own - 1)
    assert lane.share_cpus(own + 5).result(5) == 1
    assert lane.share_cpus(0).result(5) == own and lane.call(torch.get_num_threads) == own
