"""Shared fixtures: tiny random-weight models built here, fake generators, stores, running apps."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
# One GGUF → safetensors conversion for the whole suite (and across runs), outside tmp dirs.
MODEL_CACHE = Path(os.environ.get("AIGC_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))
ARTIFACTS = ROOT / "test-artifacts"


# ------------------------------------------------------------------ the C++ decoding loop


@pytest.fixture(scope="session")
def native_layers() -> object:
    """torch.ops.aigc.lean_layers, built once into the model cache (setup.sh installs g++ and ninja:
    a failed build fails the tests that need it instead of skipping them)."""
    from generators.text.engine.native import load_native_layers

    op, reason = load_native_layers(MODEL_CACHE / "_native")
    assert op is not None, reason
    return op


# ------------------------------------------------------------------ tiny real model


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's tokenizer (with its chat template), read from the packaged GGUF."""
    from tests.tiny import save_smol_tokenizer

    return save_smol_tokenizer(tmp_path_factory.mktemp("smol-tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(smol_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama (2 layers, width 64) with the real tokenizer: fast and honest."""
    from tests.tiny import save_tiny_llama

    return save_tiny_llama(smol_tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


# ------------------------------------------------------------------ fakes


def make_fake_text_plugin() -> type:
    """A scripted text generator: deterministic words, honours cancel, can be told to fail."""
    from generators.base import (
        CAP_CANCEL,
        CAP_CHAT,
        CAP_COMPLETION,
        CAP_LOGIT_BIAS,
        CAP_LOGPROBS,
        CAP_STREAM,
        GenerationFailedError,
        GenerationStats,
        GeneratorInfo,
        SamplingParams,
        StrictModel,
        TextChunk,
        TextGenerator,
        TokenLogprob,
    )

    class FakeOptions(StrictModel):
        words: int = 12
        delay_s: float = 0.0
        fail_after: int | None = None
        fail_kind: str = "studio"  # studio: GenerationFailedError; oom: MemoryError; crash: RuntimeError
        memory_mb: int = 100
        context_window: int = 10_000

    class FakeText(TextGenerator):
        info = GeneratorInfo(
            plugin="fake-text",
            modality="text",
            family="fake",
            description="scripted words for tests",
            capabilities=frozenset({CAP_STREAM, CAP_CHAT, CAP_COMPLETION, CAP_CANCEL, CAP_LOGPROBS, CAP_LOGIT_BIAS}),
            params=SamplingParams,
            load_options=FakeOptions,
        )
        load_count = 0

        def _load(self, progress: Any) -> None:
            type(self).load_count += 1
            progress("fake load")

        def _unload(self) -> None:
            pass

        def memory_bytes(self) -> int:
            return self.options.memory_mb * 2**20 if self.loaded else 0

        def estimated_memory_bytes(self) -> int:
            return self.options.memory_mb * 2**20

        @property
        def context_window(self) -> int:
            return self.options.context_window

        @property
        def vocabulary_size(self) -> int | None:
            return 1000 if self.loaded else None  # its words are not tokens: ids only for the logit_bias checks

        def stream(self, request: Any, cancel: threading.Event | None = None) -> Any:
            prompt = request.messages[-1].content if request.messages else request.prompt
            n = min(self.options.words, request.params.max_new_tokens)
            finish = "length" if n < self.options.words else "stop"
            done = 0
            for i in range(n):
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                if self.options.fail_after is not None and i >= self.options.fail_after:
                    if self.options.fail_kind == "oom":
                        raise MemoryError("fake allocation of 80 GiB failed")
                    if self.options.fail_kind == "crash":
                        raise RuntimeError("fake kernel exploded")
                    raise GenerationFailedError("the fake model broke on purpose")
                time.sleep(self.options.delay_s)
                done += 1
                word = f"w{i}({prompt[:8]}) "
                scored = (TokenLogprob(word, -0.1 * (i + 1), tuple((f"alt{k}", -1.0 - k) for k in range(request.logprobs or 0))),)
                yield TextChunk(word, logprobs=scored if request.logprobs is not None else ())
            stats = GenerationStats(len(request.messages), done, request.params.seed or 0, 0.01, 100.0)
            yield TextChunk("", finish_reason=finish, stats=stats)

        def prompt_logprobs(self, text: str, top: int = 0) -> list[Any]:
            words = text.split(" ")
            return [TokenLogprob(w if i == 0 else " " + w, None if i == 0 else -0.5, () if i == 0 else
                                 tuple((f"alt{k}", -1.0 - k) for k in range(top))) for i, w in enumerate(words)]

    return FakeText


@pytest.fixture
def fake_plugin() -> type:
    return make_fake_text_plugin()


@pytest.fixture
def make_ctx(tmp_path: Path, fake_plugin: type) -> Any:
    """Build an AppContext on a temporary SQLite store with fake models."""
    from generators.registry import ModelSpec, Registry
    from storage import Store
    from webui.services.context import AppContext
    from webui.settings import ModelEntry, Settings

    made: list[Any] = []

    def build(models: dict[str, dict[str, Any]] | None = None, *, images: bool = False,
              real: dict[str, tuple[type, dict[str, Any]]] | None = None, **settings: Any) -> Any:
        """Fake text models by name (options per model); `images` adds the shipped GAN, VAE and digit diffusion;
        `real`: more models by name, each (plugin class, options), e.g. a tiny TransformersLM."""
        from generators.image.diffusion_plugin import DigitDiffusionPlugin
        from generators.image.plugin import GANPlugin, VAEPlugin
        from webui.settings import default_models

        entries = [ModelEntry(name=n, plugin="fake-text", options=o) for n, o in (models or {"fake": {}}).items()]
        if images:
            entries += [m for m in default_models() if m.plugin in ("gan", "vae", "digit-diffusion")]
        entries += [ModelEntry(name=n, plugin=cls.info.plugin, options=o) for n, (cls, o) in (real or {}).items()]
        s = Settings(data_dir=tmp_path / "data", models=entries, **settings)
        store = Store(s.database_url, s.data_dir)
        reg = Registry({"fake-text": fake_plugin, "gan": GANPlugin, "vae": VAEPlugin,
                        "digit-diffusion": DigitDiffusionPlugin, **{cls.info.plugin: cls for cls, _ in (real or {}).values()}},
                       cache_dir=str(tmp_path / "cache"))
        for e in entries:
            reg.add(ModelSpec(e.name, e.plugin, e.options))
        ctx = AppContext(settings=s, registry=reg, store=store)
        made.append((ctx, list(real or {})))
        return ctx

    yield build
    for ctx, real_models in made:
        for name in real_models:  # (never a model a test shares across contexts, e.g. the session's pipeline)
            with contextlib.suppress(Exception):  # (a model still generating stays)
                ctx.registry.unload(name)  # a loaded LM leaves the compute lane with it
        ctx.store.close()


@pytest.fixture
def jobs_ctx(make_ctx: Any) -> Any:
    """A fake-model context whose job runner is started (polling fast) and can train the char-LSTM."""
    from generators.text.char_lstm import CharLSTM
    from webui.services import training

    ctx = make_ctx()
    ctx.registry.plugins["char-lstm"] = CharLSTM
    ctx.jobs.poll_s = 0.1
    training.start_jobs(ctx)
    yield ctx
    ctx.jobs.close()


# ------------------------------------------------------------------ a running app (subprocess)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 30) -> None:
    """Poll `condition` until it holds (synchronise on what happened, never on a sleep's length); fail
    saying `what` did not happen."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class RunningApp:
    """`python launch.py` in a subprocess, as a user starts it."""

    def __init__(self, data_dir: Path, extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra = extra or []
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "RunningApp":
        cmd = [
            sys.executable, str(ROOT / "launch.py"), "--port", str(self.port), "--data-dir", str(self.data_dir),
            "--model-cache-dir", str(MODEL_CACHE), *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.output.append(line)
                if "AIGC Studio is ready" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the app did not start:\n" + "".join(self.output[-40:]))
        return self

    def stop(self, sig: int = 2) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None


@pytest.fixture(scope="session")
def default_model_cache() -> Path:
    """Convert the default GGUF once per machine (into MODEL_CACHE) before any app starts, so no
    test's first reply waits for the one-time conversion (~30 s idle, minutes on a busy CPU)."""
    from generators.text.model_source import ensure_gguf_cache, resolve_source
    from webui.settings import default_models

    ensure_gguf_cache(resolve_source(default_models()[0].options["source"]).location, str(MODEL_CACHE), lambda _m: None)
    return MODEL_CACHE


@pytest.fixture
def running_app(tmp_path: Path, default_model_cache: Path) -> Iterator[Any]:
    apps: list[RunningApp] = []

    def start(data_dir: Path | None = None, extra: list[str] | None = None, env: dict[str, str] | None = None) -> RunningApp:
        app = RunningApp(data_dir or tmp_path / "data", extra, env).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()
