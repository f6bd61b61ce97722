"""`fraudctl drill`: the closed loop end to end, with every real part (Tansu, Feast, MLflow,
ONNX Runtime, Evidently, the scoring service and the stream processor in their processes).

Each drill takes minutes: the slowest tests of the suite, and each one checks a whole claim
of the monitoring issue at once. The amount-shift drill runs the whole loop, up to the
promotion, and the control the whole span; the new-merchant-mix and new-fraud-pattern drills
stop at the alarm (`until="detected"`): what they add is the detection, and the loop after it
is the same code. The guard's two drills (`bad-challenger`, `bad-champion`) are not run here,
to keep CI under its 30 minutes: their claims (a bad canary is stopped with the champion
untouched; a bad champion is rolled back and every process serves the restored one) are
tested against real scoring processes in test_canary_guard.py.
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
    report = run_drift("amount-shift", _settings(tmp_path), WORLD, print, until="settled")
    assert report.passed, report.verdict
    assert report.drift_detected
    # The features that really moved: the amount itself, or the card's amount statistics.
    assert "amount_log" in report.drifted_features
    assert report.detection_hours is not None and 0 < report.detection_hours <= 4 * 24
    assert report.retrained
    assert any(e["action"] == "drift_alarm" for e in report.actions)
    # The retrained challenger went through shadow and the canary steps and was promoted.
    assert any(e["action"] == "canary_step" for e in report.actions)
    assert report.champion_after != report.champion_before and not report.canary_stopped


def test_new_merchant_mix_is_detected_and_names_a_feature_the_new_merchants_move(tmp_path: Path) -> None:
    report = run_drift("new-merchant-mix", _settings(tmp_path), WORLD, print, until="detected")
    assert report.passed, report.verdict
    assert report.detected_by == "drift"
    assert report.detection_hours is not None and 0 < report.detection_hours <= 4 * 24
    # Half the legit payments go to new, online-only crypto merchants: new merchants have no
    # history (their counts are low), pay online with a device, at crypto amounts.
    moved_by_construction = {
        "channel_is_ecommerce", "has_device", "amount_log", "card_amount_zscore_30d",
        "merchant_txn_count_24h", "merchant_txn_count_7d", "merchant_txn_count_28d_lag7d",
        "card_distinct_merchants_24h", "device_txn_count_24h", "score",
    }  # fmt: skip
    assert set(report.drifted_features) & moved_by_construction, report.drifted_features


def test_new_fraud_pattern_moves_no_input_and_is_caught_by_the_matured_labels(tmp_path: Path) -> None:
    report = run_drift("new-fraud-pattern", _settings(tmp_path), WORLD, print, until="detected")
    assert report.passed, report.verdict
    # The scores stay calibrated-looking (no drift alarm); the labels, once matured, find
    # more fraud among the passed transactions than the scores expected.
    assert report.detected_by == "missed_fraud"
    assert report.detection_hours is not None and report.detection_hours > 0
    after = [d for d in report.estimate_vs_labels if d["day"] >= report.drift_start[:10]]
    assert after and max(d["found_fraud"] - d["expected_fraud"] for d in after) > 0


def test_no_drift_raises_no_alarm_and_no_retraining(tmp_path: Path) -> None:
    report = run_drift("none", _settings(tmp_path), WORLD, print)
    assert report.passed, report.verdict
    assert not report.drift_detected and report.drifted_features == []
    assert not report.retrained
    assert report.champion_after == report.champion_before
