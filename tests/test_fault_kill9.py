"""kill -9 mid-stream, restart, nothing lost — a short run of benchmarks/fault_kill9.py (the script does 50)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fault_kill9 import run


@pytest.mark.e2e
def test_kill9_mid_stream_twice_loses_nothing(tmp_path: Path) -> None:
    tally = run(3, tmp_path, log=False)  # two kills, three starts
    assert tally["problems"] == 0 and tally["rounds"] == 2
    assert tally["intact_after_restart"] == 2 and tally["killed_mid_stream"] >= 1
