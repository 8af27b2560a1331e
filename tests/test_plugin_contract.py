"""One contract suite over every plugin `discover_plugins()` finds — the built-ins, a third-party plugin
and the example plugins of `examples/`, each installed through a real entry point as pip would leave it —
checking what each declares, for real, on a tiny model built here: options validated and named,
load/unload idempotent (also from two threads at once), failures typed, text streams that end with
stats, seeds that reproduce, cancel before the first step and within one step, images whose seeds
reproduce whatever the batch.

A new plugin needs only an entry in `TINY` (how to build a tiny one); the checks come from its
declared capabilities, so a plugin that declares `seed` or `cancel` without keeping it fails here.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import generators.base as base
from generators.base import (
    CAP_CANCEL,
    CAP_CHAT,
    CAP_CLASS_CONDITIONAL,
    CAP_COMPLETION,
    CAP_INTERPOLATE,
    CAP_LOGIT_BIAS,
    CAP_RECONSTRUCT,
    CAP_SEED,
    CAP_STEPS,
    CAP_TEXT_TO_IMAGE,
    CAP_TRAJECTORY,
    GenerationCancelledError,
    Generator,
    ImageEnd,
    ImageGenerator,
    InvalidOptionsError,
    LoadFailedError,
    PaintRequest,
    PromptParams,
    SamplingParams,
    StepControl,
    StepEvent,
    StreamClock,
    StudioError,
    TextGenerator,
    TextRequest,
    validate_model,
)
from generators.registry import discover_plugins
from tests.test_registry import PLUGIN_CODE, install_test_distribution

KNOWN_CAPABILITIES = {v for k, v in vars(base).items() if k.startswith("CAP_") and isinstance(v, str)}


@dataclass
class Tiny:
    """How to build one tiny model of a plugin: load options that work, options whose load must fail
    with a StudioError, and the plugin's own params for a request."""

    options: dict[str, Any]
    broken: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    prompt: bool = False  # text: a plain prompt (a continuation model) instead of a chat


@dataclass
class Kit:
    """What the builders need: the session's tiny models and a place for files."""

    tiny_model_dir: Path
    tmp: Path
    remote_url: str


def _transformers(kit: Kit) -> Tiny:
    return Tiny({"source": str(kit.tiny_model_dir), "device": "cpu", "max_batch": 4},
                {"source": str(kit.tmp / "missing.gguf")})


def _char_lstm(kit: Kit) -> Tiny:
    from generators.text.char_lstm import CharLSTMConfig, build_network, save_char_lstm

    vocab = list("\n !',.abcdefghijklmnopqrstuvwxyz")
    folder = kit.tmp / "lstm"
    if not folder.exists():
        config = CharLSTMConfig(vocab_size=len(vocab), embed_dim=8, hidden=16, layers=1, dropout=0.0)
        save_char_lstm(folder, build_network(config), vocab, {"note": "random weights"})
    return Tiny({"weights": str(folder)}, {"weights": str(kit.tmp / "no-such-lstm")}, prompt=True)


def _openai_remote(kit: Kit) -> Tiny:
    return Tiny({"base_url": kit.remote_url, "max_retries": 0, "timeout_s": 5},
                {"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout_s": 2})


def _image(weights: str, params: dict[str, Any] | None = None) -> Callable[[Kit], Tiny]:
    return lambda kit: Tiny({"weights": weights, "device": "cpu"}, {"weights": str(kit.tmp / "no-such-weights")},
                            params or {})


def _diffusers(kit: Kit) -> Tiny:
    from tests.image.tiny_diffusers import save_tiny_pipeline

    folder = kit.tmp / "tiny-sd"
    if not folder.exists():
        save_tiny_pipeline(folder)
    return Tiny({"source": str(folder), "device": "cpu"}, {"source": str(kit.tmp / "no-such-pipeline")},
                {"prompt": "a red cat", "width": 32, "height": 32, "steps": 2})


def _echo(kit: Kit) -> Tiny:
    return Tiny({}, {"greeting": 5})  # a wrong type: refused when the options are validated


def _example_markov(kit: Kit) -> Tiny:
    return Tiny({}, {"corpus": str(kit.tmp / "no-such-corpus.txt")}, prompt=True)


def _example_textures(kit: Kit) -> Tiny:
    return Tiny({"size": 16}, {"size": 17}, {"steps": 3})  # 17: not a multiple of 16, refused as options


TINY: dict[str, Callable[[Kit], Tiny]] = {
    "transformers": _transformers,
    "char-lstm": _char_lstm,
    "openai-remote": _openai_remote,
    "gan": _image("builtin:gan-mnist32"),
    "vae": _image("builtin:vae-mnist32"),
    "digit-diffusion": _image("builtin:diffusion-mnist32", {"steps": 3}),
    "diffusers": _diffusers,
    "echo": _echo,  # the third-party plugin below
    "example-markov": _example_markov,  # examples/text_plugin.py
    "example-textures": _example_textures,  # examples/image_plugin.py
}
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def third_party(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, type[Generator]]]:
    """Every plugin discovered, with a third-party one (`echo`) and the examples a newcomer copies installed
    as pip would leave them."""
    root = tmp_path_factory.mktemp("dist")
    install_test_distribution(root, "aigc_contract_echo", PLUGIN_CODE, {"echo": "aigc_contract_echo:EchoPlugin"})
    install_test_distribution(root, "aigc_example_text", (EXAMPLES / "text_plugin.py").read_text(),
                              {"example-markov": "aigc_example_text:MarkovText"})
    install_test_distribution(root, "aigc_example_image", (EXAMPLES / "image_plugin.py").read_text(),
                              {"example-textures": "aigc_example_image:Textures"})
    sys.path.insert(0, str(root))
    try:
        yield discover_plugins()
    finally:
        sys.path.remove(str(root))
        for module in ("aigc_contract_echo", "aigc_example_text", "aigc_example_image"):
            sys.modules.pop(module, None)


@pytest.fixture(scope="module")
def kit(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    from tests.test_openai_remote import FakeServer, delta, sse_reply

    class Endless(list):  # type: ignore[type-arg]
        """Every POST gets the same streamed reply, long enough to be stopped in the middle."""

        def pop(self, index: int = -1) -> Any:
            return sse_reply([delta(f"w{i} ") for i in range(30)] + [delta("", "stop")])

    server = FakeServer([])
    server.replies = Endless()
    yield Kit(tiny_model_dir, tmp_path_factory.mktemp("contract"), server.url)
    server.close()


@pytest.fixture
def plugin(request: pytest.FixtureRequest, third_party: dict[str, type[Generator]],
           kit: Kit) -> tuple[type[Generator], Tiny]:
    name = request.param
    if name not in third_party:
        pytest.fail(f"{name!r} has a tiny build here but discover_plugins() does not find it")
    return third_party[name], TINY[name](kit)


def by_plugin(test: Callable[..., None]) -> Any:
    return pytest.mark.parametrize("plugin", sorted(TINY), indirect=True)(test)


def build(cls: type[Generator], tiny: Tiny, kit: Kit, options: dict[str, Any] | None = None) -> Any:
    return cls(f"contract-{cls.info.plugin}", tiny.options if options is None else options,
               cache_dir=str(kit.tmp / "cache"))


@contextmanager
def loaded(cls: type[Generator], tiny: Tiny, kit: Kit) -> Iterator[Any]:
    """The plugin's tiny build, loaded for the block and unloaded after it."""
    gen = build(cls, tiny, kit)
    gen.load()
    try:
        yield gen
    finally:
        gen.unload()


# ------------------------------------------------------------------ every plugin


def test_every_discovered_plugin_has_a_tiny_build(third_party: dict[str, type[Generator]]) -> None:
    assert {"echo", "example-markov", "example-textures"} <= set(third_party)  # came through their entry points
    missing = sorted(set(third_party) - set(TINY))
    assert not missing, f"plugins without a tiny build in tests/test_plugin_contract.py: {missing}"


@by_plugin
def test_info_options_and_capabilities_are_declared(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    info = cls.info
    assert info.capabilities <= KNOWN_CAPABILITIES, info.capabilities - KNOWN_CAPABILITIES
    assert issubclass(cls, TextGenerator if info.modality == "text" else ImageGenerator)
    with pytest.raises(InvalidOptionsError, match="not_an_option"):
        build(cls, tiny, kit, {**tiny.options, "not_an_option": 1})
    with pytest.raises(InvalidOptionsError, match="not_a_param"):
        validate_model(info.params, {"not_a_param": 1})
    validate_model(info.params, tiny.params)


@by_plugin
def test_load_and_unload_are_idempotent(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    gen = build(cls, tiny, kit)
    assert gen.estimated_memory_bytes() >= 0 and not gen.describe()["loaded"]
    stages: list[str] = []
    gen.load(stages.append)
    gen.load(stages.append)  # a second load does nothing
    assert gen.loaded and gen.describe()["loaded"] and gen.memory_bytes() >= 0
    gen.unload()
    gen.unload()
    assert not gen.loaded and gen.memory_bytes() == 0
    gen.load()  # and loads again after an unload
    assert gen.loaded
    gen.unload()


@by_plugin
def test_two_threads_loading_at_once_load_once(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    gen = build(cls, tiny, kit)
    loads: list[int] = []
    real_load = gen._load

    def counted(progress: Any) -> None:
        loads.append(1)
        real_load(progress)

    gen._load = counted
    both = threading.Barrier(2)

    def load() -> None:
        both.wait()
        gen.load()

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gen.loaded and loads == [1]
    gen.unload()


@by_plugin
def test_a_load_that_cannot_work_fails_with_a_studio_error(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    with pytest.raises(StudioError) as caught:
        build(cls, tiny, kit, tiny.broken).load()
    assert str(caught.value)  # a message a person can act on, not an empty one


# ------------------------------------------------------------------ text plugins


def text_request(tiny: Tiny, seed: int, **params: Any) -> TextRequest:
    sampling = SamplingParams(**{"max_new_tokens": 12, "seed": seed, "temperature": 1.0, **params})
    if tiny.prompt:
        return TextRequest(prompt="the sea ", params=sampling)
    return TextRequest(messages=(base.ChatMessage("user", "Tell me about the sea."),), params=sampling)


@by_plugin
def test_text_streams_end_with_stats_reproduce_their_seed_and_cancel(plugin: tuple[type[Generator], Tiny],
                                                                      kit: Kit) -> None:
    cls, tiny = plugin
    if cls.info.modality != "text":
        pytest.skip("an image plugin")
    with loaded(cls, tiny, kit) as gen:
        chunks = list(gen.stream(text_request(tiny, seed=11)))
        *body, last = chunks
        assert all(c.finish_reason is None and c.stats is None for c in body)
        assert last.finish_reason in ("stop", "length") and last.stats is not None
        assert last.stats.completion_tokens >= 0 and last.stats.prompt_tokens >= 0
        text = "".join(c.text for c in chunks)
        if text:  # what was written was counted and timed
            assert last.stats.completion_tokens >= 1 and last.stats.time_to_first_token_s is not None
        if CAP_SEED in cls.info.capabilities:
            assert last.stats.seed == 11
            assert gen.generate(text_request(tiny, seed=11))[0] == text  # sampled, not greedy: the seed decides
        if CAP_CANCEL in cls.info.capabilities:
            cancel = threading.Event()
            cancel.set()  # set before the first step: no step runs
            reply, end = gen.generate(text_request(tiny, seed=11), cancel)
            assert end.finish_reason == "cancelled" and reply == "" and end.stats.completion_tokens == 0


@by_plugin
def test_logit_bias_forces_a_token_where_declared_and_is_refused_where_not(plugin: tuple[type[Generator], Tiny],
                                                                          kit: Kit) -> None:
    cls, tiny = plugin
    if cls.info.modality != "text":
        pytest.skip("an image plugin")
    with loaded(cls, tiny, kit) as gen:
        if CAP_LOGIT_BIAS not in cls.info.capabilities:  # what the API asks before it runs anything
            with pytest.raises(InvalidOptionsError, match="logit_bias"):
                gen.check_request(text_request(tiny, seed=1, logit_bias={1: 1}))
            return
        size = gen.vocabulary_size
        if size is None:
            pytest.skip("the server checks and applies the ids (tests/test_openai_remote.py)")
        token = size // 2
        one, _ = gen.generate(text_request(tiny, seed=1, max_new_tokens=1, logit_bias={token: 100}))
        four, last = gen.generate(text_request(tiny, seed=2, max_new_tokens=4, logit_bias={token: 100}))
        assert one and four == one * 4 and last.stats.completion_tokens == 4  # that token, every time
        with pytest.raises(InvalidOptionsError, match="logit_bias") as info:
            gen.generate(text_request(tiny, seed=1, logit_bias={size: -100}))
        assert info.value.param == "logit_bias"


@by_plugin
def test_text_cancel_stops_within_one_token(plugin: tuple[type[Generator], Tiny], kit: Kit,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cls, tiny = plugin
    if cls.info.modality != "text" or CAP_CANCEL not in cls.info.capabilities:
        pytest.skip("not a text plugin that declares cancel")
    cancel = threading.Event()

    class StopAtThree(StreamClock):  # Stop is pressed as the third token is sampled, wherever the plugin decodes
        def token(self, count: int = 1) -> None:
            super().token(count)
            if self.tokens >= 3:
                cancel.set()

    monkeypatch.setattr(base, "StreamClock", StopAtThree)
    with loaded(cls, tiny, kit) as gen:
        reply, last = gen.generate(text_request(tiny, seed=5, max_new_tokens=40, temperature=1.0), cancel)
    assert cancel.is_set(), "the reply ended before its third token: the tiny build must write more"
    assert last.finish_reason == "cancelled" and last.stats is not None
    assert 3 <= last.stats.completion_tokens <= 4  # at most one more token after Stop


@by_plugin
def test_text_failures_are_typed(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    caps = cls.info.capabilities
    if cls.info.modality != "text":
        pytest.skip("an image plugin")
    gen = build(cls, tiny, kit)
    with pytest.raises(StudioError, match="not loaded"):  # the contract checks the load, not each plugin
        gen.generate(text_request(tiny, seed=1))
    gen.load()
    try:
        chat = TextRequest(messages=(base.ChatMessage("user", "Hi."),), params=SamplingParams(max_new_tokens=4))
        prompt = TextRequest(prompt="Once", params=SamplingParams(max_new_tokens=4))
        for request, needs in ((chat, CAP_CHAT), (prompt, CAP_COMPLETION)):
            if needs not in caps and caps & {CAP_CHAT, CAP_COMPLETION}:  # declares the other kind only
                with pytest.raises(StudioError):
                    gen.generate(request)
    finally:
        gen.unload()


@by_plugin
def test_a_continued_turn_is_left_open(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    """A plugin declaring `continue-turn` renders the last assistant message open (nothing after it) and
    writes on from there."""
    cls, tiny = plugin
    if base.CAP_CONTINUE_TURN not in cls.info.capabilities:
        pytest.skip("does not declare continue-turn")
    with loaded(cls, tiny, kit) as gen:
        request = TextRequest(messages=(base.ChatMessage("user", "Write."), base.ChatMessage("assistant", "The sea was")),
                              params=SamplingParams(max_new_tokens=3, seed=1), continue_turn=True)
        assert gen.render_prompt(request).text.endswith("The sea was")
        _, last = gen.generate(request)
        assert last.stats is not None and last.stats.prompt_tokens == gen.render_prompt(request).tokens


# ------------------------------------------------------------------ image plugins


@by_plugin
def test_images_reproduce_their_seeds_whatever_the_batch_and_cancel_between_steps(
        plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    caps = cls.info.capabilities
    if cls.info.modality != "image":
        pytest.skip("a text plugin")
    gen = build(cls, tiny, kit)
    gen.load()
    params = validate_model(cls.info.params, tiny.params)
    try:
        if CAP_CLASS_CONDITIONAL in caps:
            def run(ends: list[ImageEnd], control: StepControl | None = None) -> np.ndarray:
                extra = {"control": control} if CAP_STEPS in caps else {}
                return gen.sample(ends, params, **extra).pixels
            pair = [ImageEnd(0, 5), ImageEnd(1, 6)]
        else:
            assert CAP_TEXT_TO_IMAGE in caps, "an image plugin draws by class or from a prompt"

            def run(ends: list[ImageEnd], control: StepControl | None = None) -> np.ndarray:
                seeds = [e.seed for e in ends]
                return gen.paint(PaintRequest(params, seeds[0], count=len(seeds)), control).pixels
            pair = [ImageEnd(0, 5), ImageEnd(0, 6)]
        both = run(pair)
        h, w, c = gen.image_size if CAP_CLASS_CONDITIONAL in caps else (params.height, params.width, 3)
        assert both.dtype == np.uint8 and both.shape == (2, h, w, c)
        if CAP_SEED in caps:
            assert np.array_equal(run(pair), both)
            assert np.array_equal(run(pair[1:])[0], both[1])  # alone = in a batch
        if CAP_STEPS in caps:
            cancel = threading.Event()
            cancel.set()
            with pytest.raises(GenerationCancelledError):
                run(pair, StepControl(cancel=cancel))
    finally:
        gen.unload()


# ------------------------------------------------------------------ the image contract's template calls


def _one_image(gen: Any, params: Any, control: StepControl | None = None, seed: int = 5) -> Any:
    """One image through the plugin's public call: a (class, seed) end, or a prompt."""
    caps = gen.info.capabilities
    extra = {"control": control} if control is not None else {}
    if CAP_CLASS_CONDITIONAL in caps:
        return gen.sample([ImageEnd(0, seed)], params, **extra)
    return gen.paint(PaintRequest(params, seed), control)


@by_plugin
def test_image_calls_carry_the_contracts_stats(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    if cls.info.modality != "image":
        pytest.skip("a text plugin")
    caps = cls.info.capabilities
    gen = build(cls, tiny, kit)
    params = validate_model(cls.info.params, tiny.params)
    with pytest.raises(LoadFailedError, match="not loaded"):  # the contract checks the load, not each plugin
        _one_image(gen, params)
    gen.load()
    try:
        seen: list[StepEvent] = []
        out = _one_image(gen, params, StepControl(seen.append, preview_every=0) if CAP_STEPS in caps else None)
        stats = out.stats
        assert stats is not None and stats.seconds > 0 and stats.images == len(out.pixels) == 1
        assert stats.images_per_s is not None and stats.images_per_s > 0
        if CAP_STEPS in caps:  # every step reported to the control, and counted once
            assert stats.steps == len(seen) == getattr(params, "steps", len(seen)) > 0
            assert [e.step for e in seen] == list(range(1, stats.steps + 1))
        else:
            assert stats.steps == 0 and stats.seconds_per_step is None
    finally:
        gen.unload()


@by_plugin
def test_stepping_image_plugins_stop_within_one_step(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    caps = cls.info.capabilities
    if cls.info.modality != "image" or CAP_STEPS not in caps:
        pytest.skip("not a stepping image plugin")
    gen = build(cls, tiny, kit)
    gen.load()
    params = validate_model(cls.info.params, tiny.params)
    assert getattr(params, "steps", 2) >= 2, "the tiny build must take at least two steps to show a stop between them"
    calls: list[Callable[[StepControl], Any]] = [lambda c: _one_image(gen, params, c)]
    if CAP_TRAJECTORY in caps:
        calls.append(lambda c: gen.trajectory(ImageEnd(0, 5), params, [0, 1, params.steps], c))
    try:
        for call in calls:
            cancel = threading.Event()
            seen: list[int] = []

            def stop_at_first(event: StepEvent, seen: list[int] = seen, cancel: threading.Event = cancel) -> None:
                seen.append(event.step)
                cancel.set()  # Stop pressed while step 1 was reported

            with pytest.raises(GenerationCancelledError):
                call(StepControl(stop_at_first, cancel, preview_every=0))
            assert seen == [1]  # no second step ran
    finally:
        gen.unload()


@by_plugin
def test_image_calls_a_plugin_does_not_declare_are_refused(plugin: tuple[type[Generator], Tiny], kit: Kit) -> None:
    cls, tiny = plugin
    if cls.info.modality != "image":
        pytest.skip("a text plugin")
    caps = cls.info.capabilities
    gen = build(cls, tiny, kit)  # refused before any load: the declared capabilities decide
    end = ImageEnd(0, 1)
    undeclared: list[tuple[str, Callable[[], Any]]] = [
        (CAP_CLASS_CONDITIONAL, lambda: gen.sample([end], gen.info.params())),
        (CAP_TEXT_TO_IMAGE, lambda: gen.paint(PaintRequest(PromptParams(), 1))),
        (CAP_TRAJECTORY, lambda: gen.trajectory(end, gen.info.params(), [0])),
        (CAP_INTERPOLATE, lambda: gen.interpolate(end, ImageEnd(0, 2), 2, gen.info.params())),
        (CAP_RECONSTRUCT, lambda: gen.reconstruct(np.zeros(gen.image_size, np.uint8), 0, [0])),
    ]
    for capability, call in undeclared:
        if capability in caps or (capability == CAP_TEXT_TO_IMAGE and caps & base.PROMPTED_CAPABILITIES):
            continue
        with pytest.raises(InvalidOptionsError):
            call()


def test_an_image_plugin_writes_only_its_inner_call() -> None:
    """What the template gives a plugin that implements `_sample` alone: the compute lane, the load check,
    a cancel before the first step, stats, and a refusal of what it does not declare."""
    from generators.compute import lane

    threads: list[threading.Thread] = []

    class Minimal(ImageGenerator):
        info = base.GeneratorInfo("minimal", "image", "test", "the least an image plugin writes",
                                  frozenset({CAP_CLASS_CONDITIONAL, CAP_SEED}), base.StrictModel, base.StrictModel)

        def _load(self, progress: Any) -> None:
            pass

        def _unload(self) -> None:
            pass

        def _sample(self, ends: Any, params: Any, control: StepControl) -> base.ImageOutput:
            threads.append(threading.current_thread())
            return base.ImageOutput(np.stack([np.full((4, 4, 1), e.seed % 256, np.uint8) for e in ends]), "f" * 16)

    gen = Minimal("minimal")
    with pytest.raises(LoadFailedError, match="minimal is not loaded"):
        gen.sample([ImageEnd(0, 1)], base.StrictModel())
    gen.load()
    out = gen.sample([ImageEnd(0, 1), ImageEnd(0, 2)], base.StrictModel())
    assert out.pixels[:, 0, 0, 0].tolist() == [1, 2] and out.stats is not None and out.stats.images == 2
    assert threads == [lane().thread]  # tensor work runs on the compute lane, never the caller's thread
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationCancelledError):
        gen.sample([ImageEnd(0, 1)], base.StrictModel(), StepControl(cancel=cancel))
    assert len(threads) == 1  # cancelled before the plugin ran
    with pytest.raises(InvalidOptionsError, match="does not make images from a prompt"):
        gen.paint(PaintRequest(PromptParams(), 1))
