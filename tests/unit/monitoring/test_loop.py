"""When the loop retrains: the timing rules of `RetrainTrigger`, window by window.

The retraining itself (Feast, MLflow, the gate) runs in tests/integration/test_retrain.py;
here the evaluator is a real one over an empty state, and its worker records what it was
given instead of training, so that only the decision of *when* is under test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from core.settings import Settings
from monitoring.evaluator import Evaluator
from monitoring.loop import RetrainTrigger
from monitoring.metrics import MonitorMetrics
from monitoring.state import MonitorState

T0 = pd.Timestamp("2026-03-01", tz="UTC")
DAY = pd.Timedelta(days=1)


class RecordingWorker:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        self.calls.append(args)
        done: Future = Future()
        done.set_result({"passed": True})
        return done

    def close(self) -> None:
        pass


def _evaluator(tmp_path: Path, **settings: Any) -> Evaluator:
    s = Settings(var_dir=tmp_path / "var", retrain_gap_days=7, retrain_after_drift_days=1, **settings)
    return Evaluator(s, MonitorState(s.monitor_dir), MonitorMetrics(), worker=RecordingWorker())  # type: ignore[arg-type]


def _run(trigger: RetrainTrigger, evaluator: Evaluator, days: range) -> list[pd.Timestamp]:
    started = []
    for d in days:
        before = len(evaluator.worker.calls)  # type: ignore[attr-defined]
        trigger(evaluator, T0 + d * DAY)
        if len(evaluator.worker.calls) > before:  # type: ignore[attr-defined]
            started.append(T0 + d * DAY)
    return started


def test_a_missed_fraud_alarm_retrains_once_its_changed_days_can_be_trained_on(tmp_path: Path) -> None:
    evaluator = _evaluator(tmp_path)
    trigger = RetrainTrigger(evaluator.settings)
    assert _run(trigger, evaluator, range(0, 5)) == []  # no alarm, no schedule: nothing
    # Raised on day 6 for a change that began on day 2: due at 2 + 7 + 1 = day 10.
    evaluator.missed_fraud.raised_at, evaluator.missed_fraud.since = (
        (T0 + 6 * DAY).isoformat(),
        (T0 + 2 * DAY).isoformat(),
    )
    evaluator.missed_fraud.latest = {"found_fraud": 40.0, "expected_fraud": 20.0}
    # Once: the alarm stays raised, but its change began before that retraining.
    assert _run(trigger, evaluator, range(5, 20)) == [T0 + 10 * DAY]
    args = evaluator.worker.calls[0]  # type: ignore[attr-defined]
    assert args[1] == T0 + 10 * DAY and "missed-fraud alarm since 2026-03-03" in args[2]
    # A drift alarm raised on day 12 is a change after it: due at 12 + 8.
    evaluator.drift_alarm_at, evaluator.drifted_features = T0 + 12 * DAY, ["amount_log"]
    assert _run(trigger, evaluator, range(20, 30)) == [T0 + 20 * DAY]
    assert "drift alarm since 2026-03-13 00:00: amount_log" in evaluator.worker.calls[1][2]  # type: ignore[attr-defined]


def test_the_state_survives_a_restart_and_the_schedule_counts_from_the_first_window(
    tmp_path: Path,
) -> None:
    evaluator = _evaluator(tmp_path, retrain_every_days=7)
    trigger = RetrainTrigger(evaluator.settings)
    assert _run(trigger, evaluator, range(0, 10)) == [T0 + 7 * DAY]
    restarted = RetrainTrigger(evaluator.settings)
    restarted.restore(trigger.state_dict())
    assert _run(restarted, evaluator, range(10, 22)) == [T0 + 14 * DAY, T0 + 21 * DAY]
