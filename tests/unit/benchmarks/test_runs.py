"""A figure from several runs is their median (or another statistic) beside the runs."""

from __future__ import annotations

import itertools

import pytest

from benchmarks.runs import repeat, repeat_timed, with_runs


def test_repeat_returns_the_median_and_every_run_in_order() -> None:
    values = iter([3.0, 1.0, 2.0, 10.0, 2.5])
    assert repeat(lambda: next(values), 5) == (2.5, [3.0, 1.0, 2.0, 10.0, 2.5])


def test_repeat_needs_a_run() -> None:
    with pytest.raises(ValueError):
        repeat(lambda: 1.0, 0)


def test_repeat_timed_measures_wall_seconds() -> None:
    calls = itertools.count()
    median, runs = repeat_timed(lambda: next(calls), 3)
    assert next(calls) == 3 and len(runs) == 3 and all(r >= 0 for r in runs) and median in runs


def test_with_runs_names_the_list_and_recomputes_from_the_rounded_runs() -> None:
    assert with_runs("x_ms", [1.004, 2.996, 2.0], ndigits=2) == {"x_ms": 2.0, "x_ms_runs": [1.0, 3.0, 2.0]}
    assert with_runs("train_1m_seconds", [208.44], ndigits=1) == {
        "train_1m_seconds": 208.4,
        "train_1m_seconds_runs": [208.4],
    }
    assert with_runs("peak_mb", [700, 744, 720], statistic=max) == {
        "peak_mb": 744,
        "peak_mb_runs": [700, 744, 720],
    }
    with pytest.raises(ValueError):
        with_runs("x", [])
