"""The command line: help, settings layering, refusing unsafe or broken setups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from webui.settings import SettingsError, load_settings


def run_launch(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )


def test_help_lists_every_flag() -> None:
    out = run_launch("--help").stdout
    for flag in ("--host", "--port", "--data-dir", "--db-url", "--config", "--model", "--quantization", "--device", "--dtype",
                 "--share"):
        assert flag in out
    assert "AIGC_" in out


def test_share_without_auth_is_refused_with_a_way_out(tmp_path: Path) -> None:
    r = run_launch("--share", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "--share-without-auth" in r.stderr


def test_bad_values_are_reported_not_traced(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 'eighty'\n")
    r = run_launch("--config", str(bad))
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("port: [1,\n")
    r = run_launch("--config", str(broken))
    assert r.returncode == 2 and "not valid" in r.stderr and "Traceback" not in r.stderr
    r = run_launch("--quantization", "2bit")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_flags_beat_env_which_beats_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "studio.yaml"
    cfg.write_text(
        "port: 1111\nhost: 0.0.0.0\nmodels:\n  - name: mine\n    options: {source: /models/x, quantization: 4bit}\n"
    )
    monkeypatch.setenv("AIGC_PORT", "2222")
    s = load_settings({"port": None}, cfg)
    assert (s.port, s.host) == (2222, "0.0.0.0")
    assert [m.name for m in s.model_list()] == ["mine"] and s.model_list()[0].options["quantization"] == "4bit"
    s = load_settings({"port": 3333, "device": "cpu", "dtype": "bfloat16"}, cfg)
    assert s.port == 3333 and s.model_list()[0].options == {"device": "cpu", "dtype": "bfloat16", "source": "/models/x",
                                                             "quantization": "4bit"}
    toml = tmp_path / "studio.toml"
    toml.write_text('data_dir = "/srv/studio"\n[[models]]\nname = "a"\n')
    assert str(load_settings({}, toml).data_dir) == "/srv/studio"
    with pytest.raises(SettingsError, match="not a known setting|Extra inputs"):
        load_settings({}, _write(tmp_path / "x.toml", "prot = 1\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_model_flag_adds_a_source_and_makes_it_default() -> None:
    s = load_settings({"model": "/models/my-llama/"})
    assert s.default_model_name() == "my-llama" and s.model_list()[0].options["source"] == "/models/my-llama/"
    s = load_settings({"model": "smollm2-135m-instruct"})
    assert s.default_model_name() == "smollm2-135m-instruct"
    assert [e.name for e in s.model_list()] == ["smollm2-135m-instruct", "gemma3-270m", "lstm-fortunes", "gan-mnist32",
                                               "vae-mnist32", "diffusion-mnist32"]


def test_unwritable_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_launch("--data-dir", str(tmp_path), "--db-url", f"sqlite:///{blocker}/db.sqlite", "--port", "0")
    assert r.returncode == 2 and "Could not open or migrate the database" in r.stderr and "Traceback" not in r.stderr
