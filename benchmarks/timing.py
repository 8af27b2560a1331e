"""The timing helpers the benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: Mapping[str, Callable[[], Any]], repeats: int,
                        warmups: Mapping[str, Callable[[], Any]] | None = None) -> dict[str, float]:
    """Median wall time of each of `fns`, measured in turns (a, b, a, b, …) so that a change of load on a
    shared machine falls on every contender alike. Each is warmed up once first (with its entry in
    `warmups` when given: a cheaper call that builds the same caches, else with itself)."""
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
