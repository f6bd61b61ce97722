"""Performance with delayed labels: the label-free estimate (and its blind spot), matured cohorts
computed as an offline script would, declines never read as legitimate, the label delay."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from core.events import LEGIT_SCENARIO
from models.costs import CostModel, Thresholds, decide
from monitoring.metrics import MonitorMetrics
from monitoring.performance import (
    INTERVAL_METRICS,
    RULES_VERSION,
    SIMULATOR_DELAY_MAX_DAYS,
    SIMULATOR_DELAY_MEDIAN_DAYS,
    SIMULATOR_DELAY_MIN_DAYS,
    SIMULATOR_DELAY_SIGMA,
    SIMULATOR_UNREPORTED_SHARE,
    MissedFraudAlarm,
    PerformanceSettings,
    compare,
    estimate,
    join_labels,
    label_delay,
    matured,
    missed_fraud,
    publish_performance,
)
from pipelines import simulate

T0 = pd.Timestamp("2026-01-01", tz="UTC")
DAY = pd.Timedelta(days=1)
THRESHOLDS = Thresholds(review=0.2, decline=0.6)
COST = CostModel(review_cost=5.0, false_decline_share=0.1)
SOURCES = np.array(["chargeback", "customer", "analyst"], dtype=object)
POOLED = ("served_by", "model_version")  # every matured day in one group


def synthetic(
    days: int = 1,
    rows: int = 20_000,
    seed: int = 0,
    cards: int = 4_000,
    new_pattern: float = 0.0,
    new_pattern_from: int = 0,
    delay: str = "fast",
    start: pd.Timestamp = T0,
) -> pd.DataFrame:
    """Predictions joined with labels; the scores are calibrated by construction (fraud ~ Bernoulli(score)).

    96 % of rows score ~Beta(1, 200) (mean 0.005), 4 % ~Beta(2, 2): every band is populated.
    ``new_pattern``: from day ``new_pattern_from``, that share of the low-scored rows is fraud
    too — a pattern the model does not know, whose scores look like every other day's.
    ``delay``: ``fast`` (every fraud labelled 1-10 days later) or ``simulator`` (the simulator's
    log-normal, 5 % never reported). Only fraud gets a label, as in the simulator.
    """
    rng = np.random.default_rng(seed)
    n = days * rows
    high = rng.random(n) < 0.04
    score = np.where(high, rng.beta(2, 2, n), rng.beta(1, 200, n))
    fraud = rng.random(n) < score
    day = np.repeat(np.arange(days), rows)
    fraud |= ~high & (day >= new_pattern_from) & (rng.random(n) < new_pattern)
    event_time = start + pd.to_timedelta(day, unit="D") + pd.to_timedelta(rng.uniform(0, 86_399, n), unit="s")
    if delay == "fast":
        delay_days, reported = rng.uniform(1, 10, n), np.ones(n, dtype=bool)
    else:
        delay_days = np.clip(
            np.exp(np.log(SIMULATOR_DELAY_MEDIAN_DAYS) + SIMULATOR_DELAY_SIGMA * rng.standard_normal(n)),
            1,
            59.9,
        )
        reported = rng.random(n) >= SIMULATOR_UNREPORTED_SHARE
    labelled = fraud & reported
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": [f"c{c}" for c in rng.integers(0, cards, n)],
            "event_time": event_time,
            "score": score,
            "decision": decide(score, THRESHOLDS),
            "served_by": "champion",
            "model_version": "3",
            "amount": rng.lognormal(3.5, 1.0, n),
            "is_fraud": pd.Series(np.where(labelled, True, None), dtype=object),
            "reported_at": pd.Series(event_time + pd.to_timedelta(delay_days, unit="D")).where(labelled),
            "source": pd.Series(rng.choice(SOURCES, n, p=[0.85, 0.10, 0.05])).where(labelled),
            "_fraud": fraud,  # the ground truth, for the tests' own computations
        }
    )


# --- 1. the label-free estimate --------------------------------------------------------------------
def test_expected_precision_matches_realised_precision_on_calibrated_scores() -> None:
    frame = synthetic(days=3, seed=1)
    now = T0 + 3 * DAY + timedelta(days=90)  # every label in, and the empirical delay in use
    settings = PerformanceSettings(unreported_share=0.0, n_resamples=200)
    expected = estimate(frame, POOLED, COST).iloc[0]
    realised = matured(frame, now, COST, settings, POOLED).iloc[0]
    assert realised["label_delay_method"] == "empirical" and realised["label_share"] == 1.0

    # Fraud rate, precision of both bands, recall of review: within 3 sd of calibrated sampling.
    d = realised["reviewed"]
    print(f"review rows {d}: expected {expected['expected_precision_review']:.3f}")
    for exp, real in [
        ("expected_fraud_rate_passed", "fraud_rate"),
        ("expected_precision_review", "precision_review"),
        ("expected_recall_review", "recall_review"),
    ]:
        gap = realised[real] - expected[exp]
        z = gap / expected[f"{exp}_sd"]
        print(f"{real}: expected {expected[exp]:.4f} realised {realised[real]:.4f} ({z:+.1f} sd)")
        assert abs(gap) < 3 * expected[f"{exp}_sd"]
    assert abs(realised["precision_review"] - expected["expected_precision_review"]) < 0.03
    # The savings of review too (amounts are independent of the score here).
    gap = realised["savings_review"] - expected["expected_savings_review"]
    assert abs(gap) < 3 * expected["expected_savings_review_sd"]

    # Declines: only analysts' and customers' verdicts count (15 % of the labels here), and as
    # only fraud is ever labelled, a labelled decline is a fraud: read the bounds, not the ratio.
    assert 0 < realised["decline_labelled"] < 0.2 * realised["declined"]
    assert realised["precision_decline"] == 1.0
    low, high = realised["precision_decline_min"], realised["precision_decline_max"]
    assert low < expected["expected_precision_decline"] < high == 1.0
    # Counting the chargebacks on declines too (the simulator's data has them) measures the band.
    with_chargebacks = PerformanceSettings(
        unreported_share=0.0, n_resamples=200, decline_sources=("chargeback", "analyst", "customer")
    )
    declines = matured(frame, now, COST, with_chargebacks, POOLED).iloc[0]
    assert declines["precision_decline_min"] == pytest.approx(
        expected["expected_precision_decline"], abs=3 * expected["expected_precision_decline_sd"]
    )


def test_estimate_is_blind_to_a_new_low_scored_fraud_pattern() -> None:
    # Day 0 as trained; from day 1, 1 % of the confident approvals is a new kind of fraud.
    frame = synthetic(days=2, seed=2, new_pattern=0.01, new_pattern_from=1)
    now = T0 + 2 * DAY + timedelta(days=90)
    settings = PerformanceSettings(unreported_share=0.0, n_resamples=200)
    expected = estimate(frame).droplevel(["served_by", "model_version"])
    realised = matured(frame, now, COST, settings).droplevel(["served_by", "model_version"])
    before, after = T0, T0 + DAY
    truth = frame.assign(day=frame["event_time"].dt.floor("D"))
    flagged = truth["decision"] != "approve"
    true_recall = (
        truth[flagged & truth["_fraud"]].groupby("day").size() / truth[truth["_fraud"]].groupby("day").size()
    )
    print(expected[["expected_recall", "expected_recall_review"]])
    print(realised[["recall_review", "recall_review_low", "recall_review_high"]])
    print(true_recall)

    # The scores did not move, so neither did the estimate: it still promises ~79 % recall.
    assert expected.loc[after, "expected_recall"] == pytest.approx(
        expected.loc[before, "expected_recall"], abs=0.02
    )
    assert expected.loc[after, "expected_recall"] > 0.75
    assert expected.loc[after, "expected_recall_review"] == pytest.approx(
        expected.loc[before, "expected_recall_review"], abs=0.03
    )
    # The labels tell: review's recall holds on day 0 and collapses on day 1 (as the true recall).
    sd = expected.loc[before, "expected_recall_review_sd"]
    assert (
        abs(realised.loc[before, "recall_review"] - expected.loc[before, "expected_recall_review"]) < 3 * sd
    )
    assert realised.loc[after, "recall_review_high"] < expected.loc[after, "expected_recall_review"] - 0.15
    assert true_recall[after] < true_recall[before] - 0.2
    side = compare(frame, now, COST, settings).droplevel(["served_by", "model_version"])
    recall = side[side["metric"] == "recall_review"]
    assert abs(recall.loc[before, "z"]) < 3 and recall.loc[after, "z"] < -5
    # The estimate's own total recall has no realised counterpart: declined fraud sends no chargeback.
    total = side[side["metric"] == "recall"]
    assert not total["measurable"].any() and total["realised"].isna().all() and total["z"].isna().all()
    # Nor does the decline band's: only fraud gets a verdict here, so every labelled decline is fraud.
    declines = side[side["metric"] == "precision_decline"]
    assert (declines["realised"] == 1.0).all() and not declines["measurable"].any()


# --- 2. declines are unknown, never legitimate -------------------------------------------------------
def test_declined_rows_never_count_as_legitimate() -> None:
    frame = synthetic(days=1, rows=5_000, seed=3, cards=800)
    declined = frame["decision"] == "decline"
    # No decline carries a label: a real issuer never sees a chargeback on a declined transaction.
    for column in ("is_fraud", "reported_at", "source"):
        frame.loc[declined, column] = None
    now = T0 + DAY + timedelta(days=30)
    settings = PerformanceSettings(n_resamples=100)
    row = matured(frame, now, COST, settings, POOLED).iloc[0]
    passed = ~declined
    y = frame["is_fraud"].notna().to_numpy()

    assert row["declined"] == declined.sum() > 50
    assert row["decline_labelled"] == row["decline_known_legit"] == row["decline_known_fraud"] == 0
    # Unknown, so no precision (as legitimate, it would read 0) and bounds spanning [0, 1].
    assert math.isnan(row["precision_decline"])
    assert (row["precision_decline_min"], row["precision_decline_max"]) == (0.0, 1.0)
    # Ranking metrics over approved + reviewed rows only; as legitimate, the top scores would drag AP down.
    ap_passed = average_precision_score(y[passed], frame["score"][passed])
    ap_declines_as_legit = average_precision_score(y, frame["score"])
    assert row["average_precision"] == pytest.approx(ap_passed)
    assert ap_declines_as_legit < ap_passed - 0.1
    # Cost: as legitimate, every decline would add its false-decline cost.
    amount = frame["amount"].to_numpy()
    approved_fraud = (frame["decision"] == "approve").to_numpy() & y
    cost_passed = amount[approved_fraud].sum() + COST.review_cost * (frame["decision"] == "review").sum()
    assert row["cost"] == pytest.approx(cost_passed)
    assert row["cost"] < cost_passed + COST.false_decline_share * amount[declined].sum() - 1

    # An analyst's verdict does label a decline; a chargeback on one (the simulator's) does not.
    first, second = np.flatnonzero(declined)[:2]
    frame.loc[first, ["is_fraud", "reported_at", "source"]] = [True, T0 + 2 * DAY, "analyst"]
    frame.loc[second, ["is_fraud", "reported_at", "source"]] = [True, T0 + 2 * DAY, "chargeback"]
    row = matured(frame, now, COST, settings, POOLED).iloc[0]
    assert (row["decline_labelled"], row["decline_known_fraud"], row["precision_decline"]) == (1, 1, 1.0)
    assert row["precision_decline_min"] == pytest.approx(1 / declined.sum())
    # A "legitimate" verdict on a decline (an analyst's) is one; with verdicts both ways, compare uses it.
    third = np.flatnonzero(declined)[2]
    frame.loc[third, ["is_fraud", "reported_at", "source"]] = [False, T0 + 2 * DAY, "analyst"]
    row = matured(frame, now, COST, settings, POOLED).iloc[0]
    assert (row["decline_known_legit"], row["precision_decline"]) == (1, 0.5)
    assert row["precision_decline_max"] == pytest.approx(1 - 1 / declined.sum())
    side = compare(frame, now, COST, settings, POOLED)
    assert side.loc[side["metric"] == "precision_decline", "measurable"].all()


# --- 3. matured cohorts, as an offline script computes them -----------------------------------------
def offline_card_precision(frame: pd.DataFrame, k: int) -> float:
    """Card precision@k written plainly: per day, each card's best score and whether it had fraud."""
    values = []
    for _, day in frame.groupby(frame["event_time"].dt.floor("D")):
        cards = day.groupby("card_id").agg(score=("score", "max"), fraud=("y", "max")).reset_index()
        top = cards.sort_values(["score", "card_id"], ascending=[False, True]).head(k)
        values.append(top["fraud"].sum() / k)
    return float(np.mean(values))


def mixed_traffic(seed: int = 4) -> pd.DataFrame:
    """Four days, champion / canary / kill switch, some labels arriving after `now`."""
    frame = synthetic(days=4, rows=4_000, seed=seed, cards=800)
    rng = np.random.default_rng([seed, 1])  # not synthetic()'s stream: served_by independent of the score
    frame["served_by"] = rng.choice(["champion", "canary", "kill_switch"], len(frame), p=[0.7, 0.2, 0.1])
    frame["model_version"] = frame["served_by"].map({"champion": "3", "canary": "4", "kill_switch": None})
    return frame


def test_matured_metrics_equal_an_offline_computation() -> None:
    frame = mixed_traffic()
    now = T0 + 5 * DAY + timedelta(hours=12)  # maturity 2 days: days 0-2 matured, day 3 not yet
    k = 50
    settings = PerformanceSettings(maturity=timedelta(days=2), k=k, n_resamples=100)
    assert (frame["reported_at"] > now).sum() > 20  # labels still to come: they must not count
    result = matured(frame, now, COST, settings)

    def close(value: float) -> object:  # NaN where undefined on both sides (no review, no fraud)
        return pytest.approx(value, nan_ok=True)

    def offline_ap(y: pd.Series, score: pd.Series) -> float:
        return average_precision_score(y, score) if y.sum() else math.nan

    frame["day"] = frame["event_time"].dt.floor("D")
    frame["y"] = (frame["is_fraud"].notna() & (frame["reported_at"] <= now)).astype(int)
    frame["model_version"] = frame["model_version"].fillna(RULES_VERSION)
    expected_keys = []
    for (day, served_by, version), group in frame.groupby(["day", "served_by", "model_version"]):
        if now - (day + DAY) < timedelta(days=2):
            continue
        expected_keys.append((day, served_by, version))
        row = result.loc[(day, served_by, version)]
        passed = group[group["decision"] != "decline"]
        review = group[group["decision"] == "review"]
        approve = group[group["decision"] == "approve"]
        assert row["rows"] == len(group) and row["declined"] == len(group) - len(passed)
        assert row["decline_share"] == close((group["decision"] == "decline").mean())
        assert row["precision_review"] == close(review["y"].mean() if len(review) else math.nan)
        assert row["recall_review"] == close(
            review["y"].sum() / passed["y"].sum() if passed["y"].sum() else math.nan
        )
        assert row["fraud_rate"] == close(passed["y"].mean())
        assert row["average_precision"] == close(offline_ap(passed["y"], passed["score"]))
        assert row["card_precision_at_k"] == close(offline_card_precision(passed, k))
        cost = approve.loc[approve["y"] == 1, "amount"].sum() + COST.review_cost * len(review)
        approve_all = passed.loc[passed["y"] == 1, "amount"].sum()
        assert row["cost"] == close(cost)
        assert row["cost_approve_all"] == close(approve_all)
        assert row["savings_review"] == close(approve_all - cost)
    assert sorted(result.index) == sorted(expected_keys)
    assert len(expected_keys) == 9  # 3 matured days x champion, canary, the rules


def test_unmatured_days_are_left_out_and_the_boundary_is_inclusive() -> None:
    frame = mixed_traffic(seed=5)
    settings = PerformanceSettings(n_resamples=50)
    # Day 2 ends at T0 + 3 days: exactly 30 days later it is matured, a second earlier it is not.
    at = T0 + 3 * DAY + timedelta(days=30)
    days = matured(frame, at, COST, settings).index.get_level_values("day").unique()
    assert list(days) == [T0, T0 + DAY, T0 + 2 * DAY]
    early = matured(frame, at - timedelta(seconds=1), COST, settings).index.get_level_values("day").unique()
    assert list(early) == [T0, T0 + DAY]
    assert matured(frame, T0 + 10 * DAY, COST, settings).empty
    assert compare(frame, T0 + 10 * DAY, COST, settings).empty
    # The estimate needs no labels: every day, the running one included.
    assert list(estimate(frame).index.get_level_values("day").unique()) == [T0 + i * DAY for i in range(4)]


def test_intervals_contain_the_point_estimate() -> None:
    frame = mixed_traffic(seed=6)
    result = matured(frame, T0 + 60 * DAY, COST, PerformanceSettings(n_resamples=300))
    checked = 0
    for metric in INTERVAL_METRICS:
        values = result[[metric, f"{metric}_low", f"{metric}_high"]].dropna()
        assert (values[f"{metric}_low"] <= values[metric]).all(), metric
        assert (values[metric] <= values[f"{metric}_high"]).all(), metric
        checked += len(values)
    champion = result.xs("champion", level="served_by")
    assert (champion["precision_review_low"] < champion["precision_review_high"]).all()
    assert checked > 100


# --- 4. how many labels have arrived -------------------------------------------------------------
def test_label_delay_mirrors_the_simulator() -> None:
    # The simulator's own label stage, on 40,000 fraud transactions.
    n = 40_000
    rng = np.random.default_rng(7)
    times = T0 + pd.to_timedelta(np.sort(rng.uniform(0, 10 * 86_400, n)), unit="s")
    transactions = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": "c",
            "event_time": pd.Series(times).dt.as_unit("us"),
            "scenario": np.where(rng.random(n) < 0.5, "card_testing", LEGIT_SCENARIO),
        }
    )
    fraud = transactions[transactions["scenario"] != LEGIT_SCENARIO]
    labels = simulate._labels(transactions, SIMULATOR_UNREPORTED_SHARE, np.random.default_rng(8))
    delays = (
        labels.set_index("transaction_id")["reported_at"] - fraud.set_index("transaction_id")["event_time"]
    )
    delays = (delays.dropna() / DAY).to_numpy()
    model = label_delay(
        fraud.assign(score=0.0, decision="approve", served_by="champion"), T0, PerformanceSettings()
    )
    assert model.method == "simulator"
    for age in (1, 5, 10, 20, 30, 45, 59.99):
        assert (delays <= age).mean() == pytest.approx(model.reported_by(age), abs=0.01), age
    assert len(labels) / len(fraud) == pytest.approx(1 - SIMULATOR_UNREPORTED_SHARE, abs=0.01)
    # 30 days after the transaction: 92.9 % of the reported labels, 88.2 % of all fraud.
    assert float(model.share_by(30)) == pytest.approx(0.95 * 0.9285, abs=0.001)
    assert float(model.reported_by(SIMULATOR_DELAY_MIN_DAYS - 0.01)) == 0.0
    assert float(model.reported_by(SIMULATOR_DELAY_MAX_DAYS)) == 1.0


def test_empirical_delay_from_settled_labels_and_the_matured_share() -> None:
    # Labels with the simulator's delays; "now" leaves the first 3 days settled (older than 60 days).
    frame = synthetic(days=6, rows=20_000, seed=9, delay="simulator")
    now = T0 + 63 * DAY
    delay = label_delay(frame, now, PerformanceSettings())
    assert delay.method == "empirical" and delay.settled_labels > 500
    for age in (5, 10, 30):
        simulator_cdf = 0.5 * math.erfc(-math.log(age / 10) / 0.75 / math.sqrt(2))
        assert float(delay.reported_by(age)) == pytest.approx(simulator_cdf, abs=0.03)
    # Too few settled labels: the simulator's parameters.
    assert label_delay(frame, T0 + 40 * DAY, PerformanceSettings()).method == "simulator"


def test_compare_corrects_precision_for_the_labels_still_to_come() -> None:
    # 30 days after the day: ~12 % of the fraud unlabelled, so the raw precision reads ~12 % low.
    frame = synthetic(days=1, rows=60_000, seed=10, delay="simulator")
    now = T0 + DAY + timedelta(days=30)
    settings = PerformanceSettings(n_resamples=200)
    side = compare(frame, now, COST, settings, POOLED)
    precision = side[side["metric"] == "precision_review"].iloc[0]
    print(precision)
    assert precision["label_share"] == pytest.approx(0.95 * 0.93, abs=0.01)
    assert precision["realised"] < precision["expected"] - 2 * precision["expected_sd"]
    assert abs(precision["z"]) < 3
    assert precision["realised_adjusted"] == pytest.approx(precision["realised"] / precision["label_share"])
    recall = side[side["metric"] == "recall_review"].iloc[0]  # no correction: both counts miss alike
    assert recall["realised_adjusted"] == recall["realised"] and abs(recall["z"]) < 3


def test_missed_fraud_finds_a_new_pattern_with_few_labels_in_and_nothing_without_it() -> None:
    # Seven to nine days old, as in the drills: a third of the fraud labelled (the simulator's delay).
    settings = PerformanceSettings(maturity=timedelta(days=7))
    for new_pattern, drifted in ((0.0, False), (0.01, True)):
        frame = synthetic(
            days=6, rows=2_000, seed=11, delay="simulator", new_pattern=new_pattern, new_pattern_from=3
        )
        now = T0 + 6 * DAY + timedelta(days=7)
        gap = missed_fraud(frame, now, days=3, settings=settings).iloc[0]
        print(gap)
        assert gap["first_day"] == T0 + 3 * DAY and gap["last_day"] == T0 + 5 * DAY
        passed = frame[(frame["event_time"] >= T0 + 3 * DAY) & (frame["decision"] != "decline")]
        assert gap["rows"] == len(passed)
        assert gap["expected_fraud"] == pytest.approx(passed["score"].sum())
        assert 0.3 < gap["label_share"] < 0.45
        truth = int(passed["_fraud"].sum())
        assert gap["found_fraud"] == pytest.approx(truth, rel=0.35)  # labels scaled by their share
        if drifted:
            assert gap["z"] > 3
        else:
            assert abs(gap["z"]) < 2


def test_missed_fraud_alarm_needs_days_in_a_row_and_clears_on_a_clean_one() -> None:
    alarm = MissedFraudAlarm(days_required=2)
    day = T0
    results = []
    for z in (4.0, 1.0, 4.0, 5.0, 6.0, 0.5, 4.0):
        day += DAY
        gap = pd.Series(
            {
                "z": z,
                "last_day": day - 8 * DAY,
                "expected_fraud": 10.0,
                "found_fraud": 20.0,
                "label_share": 0.3,
            }
        )
        results.append(alarm.update(day, gap))
    assert results == [False, False, False, True, False, False, False]
    assert alarm.raised_at is None and alarm.streak == 1  # cleared by the 0.5, a new streak begun
    restored = MissedFraudAlarm(days_required=2)
    restored.restore(alarm.state_dict())
    assert restored.update(day + DAY, pd.Series({**gap, "z": 9.0, "last_day": day - 7 * DAY}))
    assert restored.since == (day - 8 * DAY).isoformat()


def test_the_evaluator_raises_the_missed_fraud_alarm_once_and_audits_it(tmp_path: Path) -> None:
    from core.settings import Settings
    from monitoring import audit
    from monitoring.evaluator import ChampionInfo, Evaluator
    from monitoring.state import MonitorState

    s = Settings(var_dir=tmp_path / "var", drift_windows_required=3, missed_fraud_days=3)
    evaluator = Evaluator(s, MonitorState(s.monitor_dir), MonitorMetrics())
    evaluator.champion = ChampionInfo("3", "lightgbm", pd.DataFrame(), {}, COST)
    # Days 0-5 as trained, then 1 % of the confident approvals is a new kind of fraud.
    frame = synthetic(days=14, rows=2_000, seed=12, delay="simulator", new_pattern=0.01, new_pattern_from=6)
    settings = PerformanceSettings(maturity=timedelta(days=7), n_resamples=1)
    raised_on = []
    for day in range(3, 15):  # each day, one more day matures
        now = T0 + (day + 7) * DAY
        evaluator._judge_missed_fraud(frame, now, settings)
        if evaluator.missed_fraud.raised_at == now.isoformat():
            raised_on.append(day)
    print(raised_on, evaluator.missed_fraud.latest)
    # Day 6 matures as day 7 of the loop's clock begins; the third flagged day in a row raises it.
    assert len(raised_on) == 1 and 7 <= raised_on[0] <= 10
    assert T0 + 6 * DAY <= pd.Timestamp(evaluator.missed_fraud.since) <= T0 + 8 * DAY
    entries = [e for e in audit.read(s) if e["action"] == "performance_alarm"]
    assert (
        len(entries) == 1 and entries[0]["actor"] == "monitor" and entries[0]["versions"]["champion"] == "3"
    )
    assert entries[0]["numbers"]["found_fraud"] > 1.5 * entries[0]["numbers"]["expected_fraud"]


# --- 5. the frame and the gauges -------------------------------------------------------------------
def test_join_labels_keeps_the_labels_known_at_now() -> None:
    predictions = pd.DataFrame(
        {
            "transaction_id": ["a", "b", "c", "c"],
            "card_id": ["x", "y", "z", "z"],
            "score": [0.1, 0.2, 0.3, 0.35],  # "c" scored twice (a retry): the last one counts
        }
    )
    labels = pd.DataFrame(
        {
            "transaction_id": ["a", "a", "b"],
            "card_id": ["x", "x", "y"],
            "is_fraud": [True, False, True],
            "reported_at": [T0 + DAY, T0 + 2 * DAY, T0 + 9 * DAY],
            "source": ["customer", "analyst", "chargeback"],
        }
    )
    joined = join_labels(predictions, labels, T0 + 3 * DAY).set_index("transaction_id")
    assert list(joined.index) == ["a", "b", "c"] and joined.loc["c", "score"] == 0.35
    assert joined.loc["a", "is_fraud"] == False and joined.loc["a", "source"] == "analyst"  # noqa: E712
    assert joined.loc[["b", "c"], "is_fraud"].isna().all()  # b's chargeback comes later


def test_publish_sets_the_gauges_per_served_by() -> None:
    frame = mixed_traffic(seed=11)
    now = T0 + 4 * DAY + timedelta(days=30)
    by = ("day", "served_by")
    expected, realised = (
        estimate(frame, by),
        matured(frame, now, COST, PerformanceSettings(n_resamples=20), by),
    )
    metrics = MonitorMetrics()
    publish_performance(metrics, expected, realised)
    read = metrics.registry.get_sample_value
    latest = T0 + 3 * DAY
    assert read("fraud_performance_expected_precision", {"band": "review", "served_by": "canary"}) == (
        pytest.approx(expected.loc[(latest, "canary"), "expected_precision_review"])
    )
    assert read("fraud_performance_matured_recall", {"served_by": "champion"}) == (
        pytest.approx(realised.loc[(latest, "champion"), "recall_review"])
    )
    assert (
        read("fraud_performance_matured_day_timestamp_seconds", {"served_by": "kill_switch"})
        == latest.timestamp()
    )
    assert read("fraud_performance_matured_label_share", {"served_by": "canary"}) == (
        pytest.approx(realised.loc[(latest, "canary"), "label_share"])
    )
    with pytest.raises(ValueError, match="served_by"):
        metrics.set_expected_performance("someone", latest.to_pydatetime(), 0.1, 0.2, 0.3)
