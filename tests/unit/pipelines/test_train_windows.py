"""The time-based split: defaults, the gap, and clear refusals."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from pipelines.train_windows import DEFAULT_GAP_DAYS, choose_windows

FIRST = pd.Timestamp("2026-01-01 00:03", tz="UTC")
LAST = pd.Timestamp("2026-01-30 23:58", tz="UTC")  # 30 whole days


def test_defaults_split_by_time_with_the_gap() -> None:
    w = choose_windows(FIRST, LAST)
    assert w.test_end == pd.Timestamp("2026-01-31", tz="UTC")
    assert w.test_start == pd.Timestamp("2026-01-25", tz="UTC")  # last 20% = 6 days
    assert w.train_end == w.test_start - pd.Timedelta(days=DEFAULT_GAP_DAYS)
    assert w.train_start == pd.Timestamp("2026-01-01", tz="UTC")
    assert w.train_start < w.valid_start < w.train_end
    assert w.valid_start == w.train_end - 0.2 * (w.train_end - w.train_start)
    assert w.label_cutoff == w.test_start
    assert w.gap_days == DEFAULT_GAP_DAYS


def test_given_train_end_places_the_test_after_the_gap() -> None:
    w = choose_windows(FIRST, LAST, train_end=datetime(2026, 1, 15), gap_days=2)
    assert w.test_start == pd.Timestamp("2026-01-17", tz="UTC")
    assert w.test_end == pd.Timestamp("2026-01-31", tz="UTC")


def test_a_test_window_inside_the_gap_is_refused() -> None:
    with pytest.raises(ValueError, match="gap days after training ends"):
        choose_windows(
            FIRST, LAST, train_end=datetime(2026, 1, 15), test_start=datetime(2026, 1, 16), gap_days=3
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_start": datetime(2026, 1, 20), "train_end": datetime(2026, 1, 20)}, "empty training window"),
        ({"test_start": datetime(2026, 1, 25), "test_end": datetime(2026, 1, 25)}, "empty test window"),
        ({"gap_days": -1}, "gap-days"),
        ({"train_start": datetime(2026, 1, 17), "train_end": datetime(2026, 1, 17, 12)}, "too short"),
    ],
)
def test_bad_windows_give_a_one_line_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_windows(FIRST, LAST, **kwargs)
