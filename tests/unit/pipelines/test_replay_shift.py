"""A looping gateway's next pass (`replay --shift-days --id-suffix`): the same traffic, later, new."""

from __future__ import annotations

import pandas as pd

from pipelines.replay import shifted


def test_a_shifted_pass_moves_every_time_and_renames_every_id_consistently() -> None:
    at = pd.Timestamp("2026-02-10 12:00", tz="UTC")
    transactions = pd.DataFrame(
        {"transaction_id": ["t1", "t2"], "event_time": [at, at + pd.Timedelta(hours=1)]}
    )
    labels = pd.DataFrame({"transaction_id": ["t2"], "reported_at": [at + pd.Timedelta(days=9)]})
    moved, moved_labels = shifted(transactions, labels, 10, "-p1")
    assert moved["transaction_id"].tolist() == ["t1-p1", "t2-p1"]
    assert (moved["event_time"] - transactions["event_time"] == pd.Timedelta(days=10)).all()
    assert moved_labels["transaction_id"].tolist() == ["t2-p1"]  # still names its transaction
    assert moved_labels["reported_at"].iloc[0] == at + pd.Timedelta(days=19)  # the delay is kept
    assert transactions["transaction_id"].tolist() == ["t1", "t2"]  # the input is untouched
