"""`fraudctl drill`: the closed loop end to end, with every real part (Tansu, Feast, MLflow,
ONNX Runtime, Evidently, the scoring service and the stream processor in their processes).

Each drill takes minutes: the slowest tests of the suite, and each one checks a whole claim
of the monitoring issue at once. The guard's two drills (`bad-challenger`, `bad-champion`)
are not run here, to keep CI under its 30 minutes: their claims (a bad canary is stopped
with the champion untouched; a bad champion is rolled back and every process serves the
restored one) are tested against real scoring processes in test_canary_guard.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from monitoring.drill import DrillWorld, run_drift

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

WORLD = DrillWorld()


def _settings(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var")


def test_amount_shift_is_detected_named_and_answered_by_a_retrained_challenger(tmp_path: Path) -> None:
    report = run_drift("amount-shift", _settings(tmp_path), WORLD, print)
    assert report.passed, report.verdict
    assert report.drift_detected
    # The features that really moved: the amount itself, or the card's amount statistics.
    assert "amount_log" in report.drifted_features
    assert report.detection_hours is not None and 0 < report.detection_hours <= 4 * 24
    assert report.retrained
    assert any(e["action"] == "drift_alarm" for e in report.actions)


def test_no_drift_raises_no_alarm_and_no_retraining(tmp_path: Path) -> None:
    report = run_drift("none", _settings(tmp_path), WORLD, print)
    assert report.passed, report.verdict
    assert not report.drift_detected and report.drifted_features == []
    assert not report.retrained
    assert report.champion_after == report.champion_before
