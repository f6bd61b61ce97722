"""Drift: PSI and KS in the right direction, the sustained alarm, the gauges, and a real Evidently report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core.features import MODEL_FEATURES
from monitoring.drift import (
    DRIFT_COLUMNS,
    PSI_EPSILON,
    ColumnDrift,
    DriftAlarm,
    DriftThresholds,
    evidently_report,
    feature_drift,
    ks,
    psi,
    publish,
    read_reference,
    to_frame,
)
from monitoring.metrics import MonitorMetrics

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def window(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


# --- psi and ks -------------------------------------------------------------------------------
def test_psi_is_near_zero_for_one_distribution_and_grows_with_the_shift() -> None:
    r = rng(1)
    reference = r.normal(size=5_000)
    same = psi(reference, r.normal(size=50_000))
    # Sampling noise alone: about (bins - 1) * (1/5000 + 1/50000) = 0.002.
    assert same < 0.01
    shifted = [psi(reference, r.normal(shift, 1, 50_000)) for shift in (0.25, 0.5, 1.0)]
    assert shifted == sorted(shifted)
    assert shifted[1] > 0.2  # half a standard deviation: past the usual threshold
    assert shifted[2] > 0.8


def test_psi_flags_a_shift_either_way_and_a_wider_spread() -> None:
    r = rng(2)
    reference = r.lognormal(3, 1, 5_000)  # amounts: a long right tail
    assert psi(reference, r.lognormal(3.5, 1, 20_000)) > 0.2
    assert psi(reference, r.lognormal(2.5, 1, 20_000)) > 0.2
    assert psi(reference, r.lognormal(3, 1.6, 20_000)) > 0.2


def test_ks_p_value_is_low_for_a_shift_and_high_for_the_same_distribution() -> None:
    r = rng(3)
    reference = r.normal(size=5_000)
    stat_same, p_same = ks(reference, r.normal(size=20_000))
    stat_shift, p_shift = ks(reference, r.normal(0.3, 1, 20_000))
    assert p_same > 0.05 and p_shift < 1e-10  # drift = a LOW p-value
    assert stat_shift > stat_same
    a, b = r.normal(size=300), r.normal(0.1, 1, 700)
    assert ks(a, b) == pytest.approx(tuple(stats.ks_2samp(a, b, method="asymp"))[:2])


def test_thresholds_point_each_method_the_right_way() -> None:
    t = DriftThresholds()  # psi 0.2: drift ABOVE; KS p-value 0.01: drift BELOW
    assert t.psi_drifted(0.3) and not t.psi_drifted(0.1)
    assert t.ks_drifted(0.001) and not t.ks_drifted(0.5)
    assert not t.psi_drifted(float("nan")) and not t.ks_drifted(float("nan"))
    assert t.drifted(0.3, 0.001) and not t.drifted(0.3, 0.5) and not t.drifted(0.1, 0.001)
    assert DriftThresholds(rule="either").drifted(0.3, 0.5)
    assert DriftThresholds(rule="psi").drifted(0.3, 0.5)
    assert DriftThresholds(rule="ks").drifted(0.1, 0.001)
    with pytest.raises(ValueError):
        DriftThresholds(ks_pvalue=5)
    with pytest.raises(ValueError):
        DriftThresholds(rule="neither")  # type: ignore[arg-type]


def test_constant_and_tied_columns_do_not_crash_and_read_sensibly() -> None:
    zeros = np.zeros(5_000)
    assert psi(zeros, np.zeros(1_000)) == 0.0
    assert ks(zeros, np.zeros(1_000)) == (0.0, 1.0)
    # A constant reference and a current that left it: all mass in the "above the range" slot.
    assert psi(zeros, np.ones(1_000)) == pytest.approx(2 * (1 - PSI_EPSILON) * np.log(1 / PSI_EPSILON))
    r = rng(4)
    flag = (r.random(5_000) < 0.3).astype(float)
    assert psi(flag, (r.random(20_000) < 0.3).astype(float)) < 0.005
    assert psi(flag, (r.random(20_000) < 0.6).astype(float)) > 0.2
    counts = r.poisson(1, 5_000).astype(float)  # mostly 0 and 1: repeated quantile edges
    assert psi(counts, r.poisson(1, 20_000).astype(float)) < 0.01
    assert psi(counts, r.poisson(2, 20_000).astype(float)) > 0.2


def test_missing_values_count_as_their_own_bin() -> None:
    r = rng(5)
    reference = r.normal(size=5_000)
    current = r.normal(size=10_000)
    current[:2_000] = np.nan  # a feature arriving empty for a fifth of the rows
    assert psi(reference, current) > 0.2
    stat, p = ks(reference, current)  # KS compares the values that are present
    assert p > 0.01
    with pytest.raises(ValueError):
        psi(reference, [])


Frames = tuple[pd.DataFrame, pd.DataFrame]


def frames(seed: int, n_ref: int, n_cur: int, shifted: str | None = None) -> Frames:
    """Every drift column with a plausible shape: amounts, counts, flags, hours, a score."""
    r = rng(seed)

    def draw(n: int, shift: bool, i: int, column: str) -> np.ndarray:
        if column == "score":
            return r.beta(1, 30 if not shift else 8, n)
        kind = i % 4
        if kind == 0:
            return np.log1p(r.lognormal(3.5 + (0.8 if shift else 0), 1, n))
        if kind == 1:
            return r.poisson(3 if not shift else 5, n).astype(float)
        if kind == 2:
            return (r.random(n) < (0.3 if not shift else 0.6)).astype(float)
        return r.integers(0, 24, n).astype(float) if not shift else r.normal(3, 1, n).round() % 24

    reference = pd.DataFrame({c: draw(n_ref, False, i, c) for i, c in enumerate(DRIFT_COLUMNS)})
    current = pd.DataFrame({c: draw(n_cur, c == shifted, i, c) for i, c in enumerate(DRIFT_COLUMNS)})
    return reference, current


def test_feature_drift_names_only_the_shifted_column_among_all_of_them() -> None:
    reference, current = frames(6, 5_000, 20_000, shifted="card_txn_count_24h")
    current["card_amount_std_30d"] = 0.0  # and a constant one, on both sides
    reference["card_amount_std_30d"] = 0.0
    results = feature_drift(reference, current)
    assert [r.column for r in results] == DRIFT_COLUMNS
    assert [r.column for r in results if r.drifted] == ["card_txn_count_24h"]
    table = to_frame(results)
    assert table.loc["card_amount_std_30d", "psi"] == 0.0
    assert table.loc["card_txn_count_24h", "ks_pvalue"] < 0.01
    assert table.loc["card_txn_count_24h", "current_rows"] == 20_000
    with pytest.raises(KeyError, match="amount_log"):
        feature_drift(reference.drop(columns=["amount_log"]), current)


def test_both_rule_ignores_a_significant_but_tiny_shift_on_a_big_window() -> None:
    r = rng(7)
    reference = pd.DataFrame({"amount_log": r.normal(size=5_000)})
    current = pd.DataFrame({"amount_log": r.normal(0.1, 1, 50_000)})
    (result,) = feature_drift(reference, current, ["amount_log"])
    assert result.ks_pvalue < 0.01 and result.psi < 0.05  # significant, and small
    assert not result.drifted
    (by_ks,) = feature_drift(reference, current, ["amount_log"], DriftThresholds(rule="ks"))
    assert by_ks.drifted


def test_read_reference_keeps_the_drift_columns(tmp_path: Path) -> None:
    reference, _ = frames(8, 50, 1)
    stored = reference.assign(transaction_id=[f"t{i}" for i in range(50)], label=False)
    stored.to_parquet(tmp_path / "reference_sample.parquet", index=False)
    assert list(read_reference(tmp_path / "reference_sample.parquet")) == DRIFT_COLUMNS


# --- the sustained alarm ---------------------------------------------------------------------
def result(column: str, drifted: bool) -> ColumnDrift:
    return ColumnDrift(column, 0.5 if drifted else 0.01, 0.2, 1e-9 if drifted else 0.6, drifted, 5_000, 1_000)


def feed(alarm: DriftAlarm, start: int, pattern: str, column: str = "amount_log") -> list:
    """One window per character: D drifted, . clean."""
    return [alarm.update(window(start + i), [result(column, c == "D")]) for i, c in enumerate(pattern)]


def test_one_noisy_window_does_not_alarm() -> None:
    alarm = DriftAlarm(windows_required=3)
    updates = feed(alarm, 0, "..D..D.DD.")
    assert not any(u.alarmed or u.raised for u in updates)
    assert [u.drifted for u in updates][2] == ["amount_log"]


def test_alarm_raises_after_n_drifted_windows_and_clears_after_n_clean_ones() -> None:
    alarm = DriftAlarm(windows_required=3)
    updates = feed(alarm, 0, ".DDD")
    assert [u.raised for u in updates] == [[], [], [], ["amount_log"]]
    active = updates[-1].active["amount_log"]
    assert active.since == window(1) and active.raised_at == window(3)  # since: the streak's start
    assert active.psi == 0.5 and active.ks_pvalue == 1e-9
    # In alarm, a clean window or two is noise too: it clears only after three in a row.
    updates = feed(alarm, 4, "D..D...")
    assert all(u.alarmed for u in updates[:-1])
    assert [u.cleared for u in updates] == [[], [], [], [], [], [], ["amount_log"]]
    assert not alarm.alarmed and not updates[-1].active


def test_each_column_needs_its_own_streak_and_the_score_counts_like_a_feature() -> None:
    alarm = DriftAlarm(windows_required=3)
    # amount_log and hour_of_day take turns: three drifted windows, never three for one column.
    for minute, column in enumerate(["amount_log", "hour_of_day", "amount_log", "hour_of_day"]):
        other = "hour_of_day" if column == "amount_log" else "amount_log"
        update = alarm.update(window(minute), [result(column, True), result(other, False)])
        assert not update.alarmed
    for minute in range(4, 7):
        update = alarm.update(window(minute), [result("score", True), result("amount_log", False)])
    assert update.raised == ["score"] and list(update.active) == ["score"]
    assert update.active["score"].since == window(4)
    # A window without the score's result (too few rows, say) neither extends nor breaks it.
    update = alarm.update(window(7), [result("amount_log", False)])
    assert list(update.active) == ["score"]


def test_windows_must_move_forward_in_event_time() -> None:
    alarm = DriftAlarm()
    alarm.update(window(5), [])
    with pytest.raises(ValueError, match="not after"):
        alarm.update(window(5), [])
    with pytest.raises(ValueError):
        DriftAlarm(windows_required=0)


# --- gauges -------------------------------------------------------------------------------------
def test_publish_sets_the_gauges_with_bounded_labels() -> None:
    metrics = MonitorMetrics()
    alarm = DriftAlarm(windows_required=1)
    results = [result("amount_log", True), result("score", False)]
    publish(metrics, results, alarm.update(window(0), results))
    value = metrics.registry.get_sample_value
    assert value("fraud_drift_psi", {"feature": "amount_log"}) == 0.5
    assert value("fraud_drift_ks_pvalue", {"feature": "score"}) == 0.6
    assert value("fraud_drift_alarm") == 1
    assert value("fraud_drift_windows_total", {"outcome": "drifted"}) == 1
    assert value("fraud_drift_windows_total", {"outcome": "clean"}) == 0
    assert value("fraud_drift_window_end_timestamp_seconds") == window(0).timestamp()
    results = [result("amount_log", False)]
    publish(metrics, results, alarm.update(window(1), results))
    assert value("fraud_drift_alarm") == 0
    with pytest.raises(ValueError, match="not a drift label"):
        metrics.set_drift("card_id_1234", 0.1, 0.5)
    assert MonitorMetrics().registry.get_sample_value("fraud_drift_alarm") == 0  # own registry each


# --- Evidently 0.7, for real ---------------------------------------------------------------------
EVIDENTLY_COLUMNS = ["amount_log", "hour_of_day", "is_weekend", "card_txn_count_24h", "score"]


@pytest.fixture(scope="module")
def shifted_amounts() -> Frames:
    """2,000 reference rows (above Evidently's 1,000-row switch of default method), one column moved."""
    r = rng(9)
    n = 2_000

    def frame(amount_mean: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "amount_log": np.log1p(r.lognormal(amount_mean, 1, n)),
                "hour_of_day": r.integers(0, 24, n),
                "is_weekend": r.integers(0, 2, n),  # ints: Evidently would infer categorical
                "card_txn_count_24h": r.poisson(2, n),
                "score": r.beta(1, 30, n),
            }
        )

    return frame(3.5), frame(4.3)


@pytest.mark.parametrize("method", ["psi", "ks"])
def test_evidently_report_names_exactly_the_shifted_column_with_the_method_asked(
    method: str, shifted_amounts: Frames, tmp_path: Path
) -> None:
    reference, current = shifted_amounts
    path = tmp_path / "drift" / f"{method}.html"
    drift = evidently_report(reference, current, EVIDENTLY_COLUMNS, method=method, path=path)  # type: ignore[arg-type]
    assert drift.drifted == ["amount_log"] and drift.drifted_count == 1
    assert path.stat().st_size > 100_000 and "amount_log" in path.read_text(encoding="utf-8")
    threshold = 0.2 if method == "psi" else 0.01
    assert {(c.method, c.threshold) for c in drift.columns.values()} == {(method, threshold)}
    # The report's own record of what ran: one ValueDrift per column, each with our method.
    content = drift.snapshot.dict()
    configs = [m["config"] for m in content["metrics"]]
    value_drifts = {c["column"]: c for c in configs if c["type"] == "evidently:metric_v2:ValueDrift"}
    assert set(value_drifts) == set(EVIDENTLY_COLUMNS)
    assert {c["method"] for c in value_drifts.values()} == {method}
    assert {m["id"] for m in content["metrics"]} >= {c.metric_id for c in drift.columns.values()}
    # And it agrees in direction with ours: the shifted column past the threshold, the rest not.
    ours = {r.column: r for r in feature_drift(reference, current, EVIDENTLY_COLUMNS)}
    for column, theirs in drift.columns.items():
        mine = ours[column].psi if method == "psi" else ours[column].ks_pvalue
        if method == "psi":
            assert (mine > threshold) == (theirs.value > threshold) == (column == "amount_log")
        else:
            assert (mine < threshold) == (theirs.value < threshold) == (column == "amount_log")
            # Evidently runs scipy's default (the exact distribution below 10,000 rows), we the
            # asymptotic one: the same test, p-values close where it matters.
            assert theirs.value == pytest.approx(mine, rel=0.05, abs=1e-4)


def test_evidently_would_pick_another_method_by_itself(
    shifted_amounts: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    """Why the method is explicit: above 1,000 reference rows the preset's default is not PSI or KS."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    reference, current = shifted_amounts
    with np.errstate(all="ignore"):
        content = Report([DataDriftPreset(columns=EVIDENTLY_COLUMNS)]).run(current, reference).dict()
    methods = {m["config"].get("method") for m in content["metrics"] if "column" in m["config"]}
    assert methods and not methods & {"psi", "ks"}
    assert "Wasserstein distance (normed)" in methods


def test_model_features_fit_the_bounded_label_set() -> None:
    assert set(DRIFT_COLUMNS) == {*MODEL_FEATURES, "score"}
