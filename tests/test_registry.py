"""The registry: entry-point discovery, lazy loading, memory budget, errors."""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path

import pytest

from generators.base import BusyError, InvalidOptionsError, LoadFailedError, StudioError, UnknownGeneratorError
from generators.registry import ENTRY_POINT_GROUP, ModelSpec, Registry, discover_plugins


def install_test_distribution(root: Path, name: str, module_code: str, entry_points: dict[str, str]) -> None:
    """A real installed distribution (dist-info + module) on sys.path, as pip would leave it."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_code))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}\n")


PLUGIN_CODE = """
from generators.base import GeneratorInfo, InvalidOptionsError, SamplingParams, StrictModel, TextChunk, TextGenerator

class Opts(StrictModel):
    greeting: str = "hello"

class EchoPlugin(TextGenerator):
    info = GeneratorInfo("echo", "text", "echo", "echoes", frozenset({"stream", "chat"}), SamplingParams, Opts)
    def _load(self, progress): progress("echo loading")
    def _unload(self): pass
    def _stream_chunks(self, request, cancel, clock):
        if request.prompt is not None:
            raise InvalidOptionsError("echo answers chat messages, not a prompt")
        clock.begin(len(request.messages), 0)
        clock.token()
        yield TextChunk(self.options.greeting + " " + request.messages[-1].content)
        yield TextChunk("", "stop")
"""


@pytest.fixture
def plugin_dist(tmp_path: Path):
    install_test_distribution(
        tmp_path,
        "aigc_echo_plugin",
        PLUGIN_CODE + "\nraise_me = None\n",
        {"echo": "aigc_echo_plugin:EchoPlugin", "broken": "aigc_missing_module:Nope", "dup": "aigc_echo_plugin:EchoPlugin"},
    )
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    sys.modules.pop("aigc_echo_plugin", None)


def test_third_party_plugin_found_through_a_real_entry_point(plugin_dist: None, caplog: pytest.LogCaptureFixture) -> None:
    plugins = discover_plugins()
    assert "echo" in plugins and "transformers" in plugins  # built-ins come through the same group
    assert "aigc_missing_module" in caplog.text  # a broken plugin is skipped with a logged error
    reg = Registry(plugins)
    reg.add(ModelSpec("my-echo", "echo", {"greeting": "hey"}))
    from generators.base import ChatMessage, TextRequest

    with reg.use("my-echo") as gen:
        text, _ = gen.generate(TextRequest(messages=(ChatMessage("user", "you"),)))
    assert text == "hey you"


def test_unknown_names_list_what_exists(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin})
    reg.add(ModelSpec("a", "fake-text"))
    with pytest.raises(UnknownGeneratorError, match="Available models: a"):
        reg.get("b")
    with pytest.raises(UnknownGeneratorError, match="installed: fake-text"):
        reg.add(ModelSpec("c", "nope"))
    with pytest.raises(StudioError, match="already configured"):
        reg.add(ModelSpec("a", "fake-text"))
    with pytest.raises(InvalidOptionsError, match="not a known setting"):
        reg.add(ModelSpec("d", "fake-text", {"wordz": 3}))


def test_lazy_load_on_first_use_with_progress(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin})
    gen = reg.add(ModelSpec("a", "fake-text"))
    assert not gen.loaded
    messages: list[str] = []
    with reg.use("a", messages.append) as used:
        assert used is gen and gen.loaded
    assert any("Loading a" in m for m in messages)


def test_memory_budget_unloads_least_recently_used(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin}, memory_budget_bytes=250 * 2**20)
    for name in "abc":
        reg.add(ModelSpec(name, "fake-text", {"memory_mb": 100}))
    reg.load("a")
    reg.load("b")
    reg.load("a")  # a is now the most recently used
    reg.load("c")  # 300 MB > 250 MB: b (LRU) goes
    assert [reg.get(n).loaded for n in "abc"] == [True, False, True]


def test_a_model_in_use_is_never_evicted(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin}, memory_budget_bytes=150 * 2**20)
    for name in "ab":
        reg.add(ModelSpec(name, "fake-text", {"memory_mb": 100}))
    with reg.use("a"):
        reg.load("b")
        assert reg.get("a").loaded
        with pytest.raises(BusyError):
            reg.unload("a")


def test_concurrency_is_bounded_per_model(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin}, concurrency=1, acquire_timeout_s=0.2)
    reg.add(ModelSpec("a", "fake-text"))
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with reg.use("a"):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    with pytest.raises(BusyError, match="busy"):
        with reg.use("a"):
            pass
    release.set()
    t.join()


def test_each_model_can_have_its_own_concurrency(fake_plugin: type) -> None:
    from contextlib import ExitStack

    reg = Registry({"fake-text": fake_plugin}, concurrency=1, acquire_timeout_s=0.2)
    reg.add(ModelSpec("wide", "fake-text", {}, concurrency=3))
    reg.add(ModelSpec("narrow", "fake-text"))
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(reg.use("wide"))  # three at once
        with pytest.raises(BusyError):
            stack.enter_context(reg.use("wide"))
        stack.enter_context(reg.use("narrow"))
        with pytest.raises(BusyError):
            stack.enter_context(reg.use("narrow"))
    from webui.settings import load_settings

    s = load_settings({"models": [{"name": "a", "plugin": "fake-text", "concurrency": 6}, {"name": "b"}], "concurrency": 2})
    assert s.generation_slots() == 6 and [e.concurrency for e in s.model_list()] == [6, None]


def test_load_failure_is_translated_and_model_can_retry(fake_plugin: type) -> None:
    class Flaky(fake_plugin):  # type: ignore[misc, valid-type]
        fail = True

        def _load(self, progress):  # type: ignore[no-untyped-def]
            if Flaky.fail:
                raise RuntimeError("disk on fire")

    reg = Registry({"fake-text": Flaky})
    reg.add(ModelSpec("a", "fake-text"))
    with pytest.raises(LoadFailedError, match="disk on fire"):
        reg.load("a")
    Flaky.fail = False
    assert reg.load("a").loaded


def test_reconfigure_changes_options_and_unloads(fake_plugin: type) -> None:
    reg = Registry({"fake-text": fake_plugin})
    reg.add(ModelSpec("a", "fake-text", {"words": 3}))
    reg.load("a")
    new = reg.reconfigure("a", words=5)
    assert new.options.words == 5 and not new.loaded and reg.get("a") is new
    with pytest.raises(InvalidOptionsError):
        reg.reconfigure("a", words="many")
    assert reg.get("a") is new
