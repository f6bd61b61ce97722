"""A figure measured over several runs, and the runs it came from (DESIGN.md section 7).

A benchmark that repeats a measurement reports the summary under its key and every run under
``KEY_runs``, so a reader can see the spread behind the figure:

    from benchmarks.runs import repeat, with_runs

    median, runs = repeat(lambda: measure_p99_ms(), 5)   # calls it 5 times
    metrics |= with_runs("online_read_p99_ms", runs, ndigits=3)
    # {"online_read_p99_ms": 2.8, "online_read_p99_ms_runs": [2.7, 2.8, 3.1, 2.8, 2.9]}

    metrics |= with_runs("train_1m_seconds", [208.4])      # one run: the list has one entry

The summary is the median unless told otherwise (``statistic=max`` for a peak, or for a
target that must hold in every run).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

RUNS_SUFFIX = "_runs"


def repeat(measure: Callable[[], float], n: int) -> tuple[float, list[float]]:
    """Call ``measure()`` ``n`` times; return (median of what it returned, the values in order).

    ``measure`` returns the figure of one run (a duration, a p99, a rate...).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    runs = [float(measure()) for _ in range(n)]
    return statistics.median(runs), runs


def repeat_timed(fn: Callable[[], object], n: int) -> tuple[float, list[float]]:
    """Call ``fn()`` ``n`` times; return (median wall seconds, each run's wall seconds)."""

    def once() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return repeat(once, n)


def with_runs(
    key: str,
    runs: Sequence[float],
    *,
    ndigits: int | None = None,
    statistic: Callable[[Sequence[float]], float] = statistics.median,
) -> dict[str, Any]:
    """``{key: statistic(runs), key + "_runs": list(runs)}``.

    With ``ndigits`` the runs are rounded first and the figure is the statistic of the listed
    (rounded) runs, rounded again: a reader recomputing it from the list gets the same number.
    """
    if not runs:
        raise ValueError(f"{key}: no runs")

    def rounded(value: float) -> float:
        return value if ndigits is None else round(value, ndigits)

    listed = [rounded(float(v)) for v in runs]
    return {key: rounded(statistic(listed)), key + RUNS_SUFFIX: listed}
