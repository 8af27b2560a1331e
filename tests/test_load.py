"""A short load test through benchmarks/load_test.py: concurrent page and HTTP API users, nothing lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.load_test import run


@pytest.mark.e2e
def test_concurrent_users_get_no_errors_and_every_turn_is_persisted(tmp_path: Path) -> None:
    tally, problems, elapsed, _ = run(users=8, seconds=15, concurrency=4, work=tmp_path)
    assert not tally.errors, tally.errors[:5]
    assert not problems, problems
    assert len(tally.page_turns) == 4 and tally.api_turns > 0 and len(tally.latencies) >= 8
