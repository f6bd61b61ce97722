"""The time-based split of a training run: train (with a validation tail) | gap | test.

    train_start ──── train ──── valid_start ── valid ── train_end ── gap ── test_start ── test ── test_end

Never a random split: fraud comes in campaigns, and rows of one campaign on both sides of
a split would let a model score well by remembering it. The **gap** is the label delay:
the model is trained at ``test_start`` from the labels reported by then (the label
cutoff), so training rows near ``train_end`` carry only the chargebacks that had time to
arrive. The test window is then scored against every label the dataset holds.

A retraining (`TrainRequest.now`) is instead trained *at* ``now``: its label cutoff is
``now``, for training and test windows alike, and nothing after ``now`` is read.

Defaults, for a dataset spanning D whole days: the test window is the last
``max(1, round(0.2·D))`` days, the gap 7 days before it (a week of chargebacks; the
median delay is ~10 days), training everything earlier, and
validation (early stopping, calibration, thresholds) the last fifth of training, at least
one day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pandas as pd

DAY = pd.Timedelta(days=1)
DEFAULT_GAP_DAYS = 7
DEFAULT_RETRAIN_DAYS = 28  # a retraining's window: [now - 28 days, now - gap), then the holdout
TEST_SHARE = 0.2
VALID_SHARE = 0.2


@dataclass(frozen=True)
class Windows:
    train_start: pd.Timestamp
    valid_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    trained_at: pd.Timestamp | None = None  # a retraining's `now`; None: a backtest, at test_start

    @property
    def label_cutoff(self) -> pd.Timestamp:
        """Training (and validation) labels are those reported by the time the model is trained."""
        return self.test_start if self.trained_at is None else self.trained_at

    @property
    def gap_days(self) -> float:
        return (self.test_start - self.train_end) / DAY

    def as_dict(self) -> dict[str, str]:
        names = ["train_start", "valid_start", "train_end", "test_start", "test_end"]
        trained = {} if self.trained_at is None else {"trained_at": self.trained_at.isoformat()}
        return (
            {name: getattr(self, name).isoformat() for name in names}
            | trained
            | {"label_cutoff": self.label_cutoff.isoformat()}
        )


def _utc(value: datetime | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def choose_windows(
    first_event: pd.Timestamp,
    last_event: pd.Timestamp,
    train_start: datetime | None = None,
    train_end: datetime | None = None,
    gap_days: float = DEFAULT_GAP_DAYS,
    test_start: datetime | None = None,
    test_end: datetime | None = None,
    trained_at: datetime | None = None,
) -> Windows:
    """Fill in the windows not given from the data's span; raise ValueError if they do not fit.

    Naive datetimes are read as UTC. Ends are exclusive. ``trained_at`` (a retraining's
    ``now``) moves the label cutoff there; it may not precede the test window's end.
    """
    if gap_days < 0:
        raise ValueError(f"--gap-days must be >= 0, got {gap_days}")
    data_start, data_end = first_event.floor("D"), last_event.floor("D") + DAY
    days = round((data_end - data_start) / DAY)
    gap = pd.Timedelta(days=gap_days)
    t_end = _utc(test_end) or data_end
    t_start = _utc(test_start)
    tr_end = _utc(train_end)
    if t_start is None:
        t_start = tr_end + gap if tr_end is not None else t_end - max(1, round(TEST_SHARE * days)) * DAY
    if tr_end is None:
        tr_end = t_start - gap
    tr_start = _utc(train_start) or data_start
    if not tr_start < tr_end:
        raise ValueError(
            f"empty training window: {tr_start:%Y-%m-%d %H:%M} to {tr_end:%Y-%m-%d %H:%M} "
            f"(the data covers {data_start:%Y-%m-%d} to {data_end:%Y-%m-%d}, {days} days)"
        )
    if not t_start < t_end:
        raise ValueError(f"empty test window: {t_start:%Y-%m-%d %H:%M} to {t_end:%Y-%m-%d %H:%M}")
    if t_start < tr_end + gap:
        raise ValueError(
            f"the test window must start at least {gap_days:g} gap days after training ends "
            f"({tr_end:%Y-%m-%d %H:%M}); it starts {t_start:%Y-%m-%d %H:%M}"
        )
    valid_span = max(DAY, VALID_SHARE * (tr_end - tr_start))
    valid_start = tr_end - valid_span
    if not tr_start < valid_start:
        raise ValueError(
            f"the training window ({(tr_end - tr_start) / DAY:.1f} days) is too short to keep "
            "at least one day for validation"
        )
    at = _utc(trained_at)
    if at is not None and at < t_end:
        raise ValueError(f"the test window ends {t_end:%Y-%m-%d %H:%M}, after the training time {at}")
    return Windows(tr_start, valid_start, tr_end, t_start, t_end, at)
