"""The canary guard's checks and verdicts (monitoring/canary.py) and its decisions
(monitoring/rollback.py `Guard.plan`, which acts on nothing), on constructed, seeded frames.

Every version maps one latent risk per transaction to its score, so the two arms of a row are
two models scoring the same vector: the champion scores the latent itself (Beta(0.5, 8), 5 %
reviewed, 1 % declined by its thresholds), a good retrain adds a little noise on the logit, a
broken model inverts it (ranks backwards) or collapses to a constant (learned nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from core.settings import Settings
from models.costs import DECLINE, REVIEW, Thresholds, decide
from monitoring import canary
from monitoring.canary import FAIL, MARGINAL, PASS, PENDING, Arm, Check, GuardConfig
from monitoring.metrics import CANARY_CHECKS, MonitorMetrics
from monitoring.rollback import CANARY, IDLE, SHADOW, STOPPED, Guard, Serving
from services.scoring.scorer import in_canary

T0 = pd.Timestamp("2026-03-01", tz="UTC")
THRESHOLDS = Thresholds(review=0.2193, decline=0.3478)  # Beta(0.5, 8)'s 95th and 99th percentiles
URL = "http://scoring:8000"

Score = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def same(latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return latent


def retrained(latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another seed of the same model: the logit moves by a little noise."""
    return np.asarray(special.expit(special.logit(latent) + rng.normal(0, 0.1, latent.size)))


def inverted(latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sign error in the calibration: the safest transaction gets the highest score."""
    return 1 - latent


def collapsed(latent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model that learned nothing (shuffled labels): the base rate and a little noise."""
    return 0.02 + rng.normal(0, 0.001, latent.size)


def predictions(
    n: int,
    *,
    champion: tuple[str, Score] = ("1", same),
    challenger: tuple[str, Score] | None = ("2", retrained),
    percent: float = 0.0,
    start: pd.Timestamp = T0,
    every: timedelta = timedelta(seconds=5),
    seed: int = 0,
    canary_fallback: float = 0.0,
    canary_latency: float = 1.0,
    prefix: str = "t",
) -> pd.DataFrame:
    """``n`` scored transactions as the monitor's frame holds them, one every ``every``."""
    rng = np.random.default_rng(seed)
    latent = rng.beta(0.5, 8, n)
    cards = np.array([f"c_{i:05d}" for i in rng.integers(0, max(n // 3, 1), n)])
    in_arm = np.array([in_canary(c, percent) for c in cards]) if challenger else np.zeros(n, bool)
    champion_score = champion[1](latent, rng)
    challenger_score = challenger[1](latent, rng) if challenger else np.full(n, np.nan)
    served_score = np.where(in_arm, challenger_score, champion_score)
    latency = rng.gamma(4.0, 1.0, n) * np.where(in_arm, canary_latency, 1.0)
    fallback = in_arm & (rng.random(n) < canary_fallback)
    served_by = np.where(fallback, "fallback", np.where(in_arm, "canary", "champion"))
    challenger_version = challenger[0] if challenger else None
    return pd.DataFrame(
        {
            "transaction_id": [f"{prefix}{i:06d}" for i in range(n)],
            "card_id": cards,
            "event_time": start + np.arange(1, n + 1) * pd.Timedelta(every),
            "score": served_score,
            "decision": decide(served_score, THRESHOLDS),
            "served_by": served_by,
            "model_version": np.where(in_arm, challenger_version, champion[0]),
            "challenger_version": challenger_version,
            "challenger_score": challenger_score,
            "champion_version": np.where(in_arm, champion[0], None),
            "champion_score": np.where(in_arm, champion_score, np.nan),
            "latency_ms": latency,
            "amount": rng.lognormal(3.5, 1.0, n),
        }
    )


def arm(version: str) -> Arm:
    return Arm(version, THRESHOLDS)


def evaluation(
    frame: pd.DataFrame, config: GuardConfig, percent: float, labels: pd.DataFrame | None = None
) -> canary.Evaluation:
    now = frame["event_time"].max()
    return canary.evaluate(
        config,
        arm("1"),
        arm("2"),
        reference_rows=canary.arm_rows(frame, "1", canary=False, percent=percent),
        candidate_rows=canary.arm_rows(frame, "2", canary=True, percent=percent),
        pairs=canary.paired_rows(frame, "1", "2"),
        labels=labels,
        now=now,
        needs=("reference", "candidate"),
    )


def by_name(result: canary.Evaluation) -> dict[str, Check]:
    return {c.name: c for c in result.checks}


# --- rows -------------------------------------------------------------------------------------
def test_paired_rows_take_each_arm_score_from_where_it_is_logged() -> None:
    frame = predictions(2_000, percent=30.0, challenger=("2", inverted))
    pairs = canary.paired_rows(frame, "1", "2")
    assert len(pairs) == len(frame)  # every row was scored by both
    canary_rows = pairs["served_by"] == "canary"
    assert 0.2 < canary_rows.mean() < 0.4
    # reference (the champion) scores the latent, the candidate 1 - latent, on every row
    np.testing.assert_allclose(pairs["reference_score"] + pairs["candidate_score"], 1.0)
    np.testing.assert_array_equal(pairs.loc[canary_rows, "candidate_score"], pairs.loc[canary_rows, "score"])
    # the other way round (the watch: the predecessor shadows the new champion) reads the same rows
    swapped = canary.paired_rows(frame, "2", "1")
    np.testing.assert_array_equal(swapped["reference_score"], pairs["candidate_score"])


def test_unscored_fallbacks_go_to_the_arm_their_card_bucket_chose() -> None:
    frame = predictions(600, percent=50.0).copy()
    frame.loc[:99, ["served_by", "model_version"]] = ["fallback", None]
    frame["model_version"] = frame["model_version"].astype(object).where(frame.index >= 100, None)
    canary_rows = canary.arm_rows(frame, "2", canary=True, percent=50.0)
    champion_rows = canary.arm_rows(frame, "1", canary=False, percent=50.0)
    assert len(canary_rows) + len(champion_rows) == len(frame)
    unscored = frame.loc[:99]
    expected = {
        t for t, c in zip(unscored["transaction_id"], unscored["card_id"], strict=True) if in_canary(c, 50.0)
    }
    assert set(canary_rows["transaction_id"]) & set(unscored["transaction_id"]) == expected
    assert 0 < len(expected) < 100


# --- each check ---------------------------------------------------------------------------------
def test_a_retrained_challenger_passes_every_check() -> None:
    result = evaluation(predictions(20_000, percent=25.0, seed=1), GuardConfig(), 25.0)
    assert result.verdict == PASS, [c.as_dict() for c in result.checks if c.outcome != PASS]
    checks = by_name(result)
    assert checks["rank_correlation"].value > 0.95
    assert checks["flip_rate"].value < 0.02
    assert [c.name for c in result.checks] == list(CANARY_CHECKS)
    assert checks["precision"].outcome == checks["cost"].outcome == PENDING  # no labels


@pytest.mark.parametrize("broken", [inverted, collapsed])
def test_a_broken_challenger_fails_on_critical_checks(broken: Score) -> None:
    result = evaluation(predictions(5_000, percent=25.0, challenger=("2", broken)), GuardConfig(), 25.0)
    checks = by_name(result)
    assert result.verdict == FAIL
    assert checks["rank_correlation"].outcome == FAIL and checks["rank_correlation"].critical
    assert (
        checks["rank_correlation"].value < 0.0
        if broken is inverted
        else abs(checks["rank_correlation"].value) < 0.1
    )
    assert checks["review_rate"].outcome == FAIL or checks["decline_rate"].outcome == FAIL
    assert checks["score_ks"].outcome == FAIL and not checks["score_ks"].critical


def test_rate_shift_needs_evidence_to_fail() -> None:
    """A review rate 2 points up: marginal on 300 paired rows, failed on 30,000; the limit is
    max(absolute, relative x the reference's rate)."""
    config = GuardConfig()
    rng = np.random.default_rng(3)
    for n, expected in ((300, MARGINAL), (30_000, FAIL)):
        reference = np.where(rng.random(n) < 0.03, REVIEW, "approve")
        candidate = reference.copy()
        candidate[(reference != REVIEW) & (rng.random(n) < 0.02 / 0.97)] = REVIEW
        check = canary.rate_check(config, REVIEW, reference, candidate, paired=True)
        assert check.threshold == pytest.approx(max(config.review_abs, 0.5 * (reference == REVIEW).mean()))
        assert check.value == pytest.approx((candidate == REVIEW).mean() - (reference == REVIEW).mean())
        assert check.outcome == expected, (n, check.as_dict())
    same_rates = canary.rate_check(config, DECLINE, reference, reference, paired=True)
    assert same_rates.outcome == PASS and same_rates.value == 0


def test_latency_fails_only_when_its_lower_bound_is_over_the_limit() -> None:
    """The canary twice as slow: failed on ~2,000 rows; on 100 its p99 is over the limit but
    its lower bound is not (marginal)."""
    config = GuardConfig()
    reference = predictions(4_000, percent=50.0, seed=4)
    champion_rows = canary.arm_rows(reference, "1", canary=False, percent=50.0)
    slow = predictions(4_000, percent=50.0, seed=4, canary_latency=2.0)
    canary_rows = canary.arm_rows(slow, "2", canary=True, percent=50.0)
    check = canary.latency_check(config, champion_rows, canary_rows)
    p99 = float(np.quantile(champion_rows["latency_ms"], 0.99))
    assert check.threshold == pytest.approx(p99 * 1.5 + 2.0)
    assert check.outcome == FAIL and check.detail["lower"] > check.threshold
    # The bound is an order statistic below the true p99 with probability >= 1 - alpha.
    n = len(canary_rows)
    k = int(stats.binom.ppf(config.alpha, n, 0.99))
    assert stats.binom.cdf(k - 1, n, 0.99) <= config.alpha
    assert check.detail["lower"] == pytest.approx(np.sort(canary_rows["latency_ms"])[k - 1])
    few = canary.latency_check(config, champion_rows, canary_rows.head(100))
    assert few.outcome == MARGINAL and few.value > few.threshold >= few.detail["lower"]
    healthy = canary.latency_check(
        config, champion_rows, canary.arm_rows(reference, "2", canary=True, percent=50.0)
    )
    assert healthy.outcome == PASS


def test_errors_compare_the_fallback_shares_of_the_arms() -> None:
    config = GuardConfig()
    frame = predictions(8_000, percent=50.0, canary_fallback=0.05, seed=5)
    champion_rows = canary.arm_rows(frame, "1", canary=False, percent=50.0)
    canary_rows = canary.arm_rows(frame, "2", canary=True, percent=50.0)
    check = canary.errors_check(config, champion_rows, canary_rows)
    assert check.detail["reference"] == 0
    assert check.value == pytest.approx((canary_rows["served_by"] == "fallback").mean())
    assert check.outcome == FAIL
    assert canary.errors_check(config, champion_rows, canary_rows.head(60)).outcome in (MARGINAL, PASS)
    assert canary.errors_check(config, champion_rows, canary_rows.iloc[:0]).outcome == PENDING


def test_ks_lower_bound_is_the_distance_minus_both_dkw_bands() -> None:
    config = GuardConfig()
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 1_000), rng.normal(1.2, 1, 1_500)
    check = canary.ks_check(config, a, b)
    distance = stats.ks_2samp(a, b).statistic
    band = math.sqrt(math.log(4 / config.alpha) / 2) * (1 / math.sqrt(1_000) + 1 / math.sqrt(1_500))
    assert check.value == pytest.approx(distance) and check.detail["lower"] == pytest.approx(distance - band)
    assert check.outcome == FAIL  # distance ~0.45, bands ~0.10
    assert canary.ks_check(config, a[:40], b[:40]).outcome == MARGINAL  # the same shift on 40 rows


def test_rank_correlation_of_a_constant_score_is_zero() -> None:
    frame = predictions(500, percent=0.0, challenger=("2", lambda s, r: np.full(s.size, 0.02)))
    check = canary.rank_check(GuardConfig(), canary.paired_rows(frame, "1", "2"))
    assert check.value == 0.0 and check.outcome == FAIL


def test_precision_and_cost_come_in_once_labels_matured() -> None:
    """Labels 40 days later: the inverted challenger flags legitimate rows (precision falls,
    cost rises); a declined row without an analyst's verdict is unknown, never legitimate."""
    config = GuardConfig(min_rows=100)
    frame = predictions(6_000, percent=25.0, challenger=("2", inverted), seed=7)
    rng = np.random.default_rng(8)
    latent = np.where(frame["served_by"] == "canary", frame["champion_score"], frame["score"])
    fraud = rng.random(len(frame)) < latent  # calibrated: the champion's score is the fraud chance
    labels = pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"][fraud],
            "card_id": frame["card_id"][fraud],
            "is_fraud": True,
            "reported_at": frame["event_time"][fraud] + pd.Timedelta(days=10),
            "source": "chargeback",
        }
    )
    now = frame["event_time"].max()
    young = evaluation(frame, config, 25.0, labels)
    assert by_name(young)["precision"].outcome == PENDING  # 30 days of maturity not reached
    later = now + pd.Timedelta(days=40)
    result = canary.evaluate(
        config,
        arm("1"),
        arm("2"),
        reference_rows=canary.arm_rows(frame, "1", canary=False, percent=25.0),
        candidate_rows=canary.arm_rows(frame, "2", canary=True, percent=25.0),
        pairs=canary.paired_rows(frame, "1", "2"),
        labels=labels,
        now=later,
        needs=("reference", "candidate"),
    )
    checks = by_name(result)
    assert checks["precision"].outcome == FAIL and checks["precision"].value < 0.1
    assert checks["precision"].detail["reference"] > 0.2
    assert checks["cost"].outcome == FAIL and checks["cost"].value > 0
    served_declines = int((frame["decision"] == DECLINE).sum())
    rows, truth = canary._matured(canary.paired_rows(frame, "1", "2"), labels, later, config)
    assert len(rows) == len(frame) - served_declines  # chargebacks never label a decline
    assert set(np.unique(truth)) <= {0.0, 1.0}


# --- the verdict -----------------------------------------------------------------------------------
def _c(name: str, outcome: str, critical: bool) -> Check:
    return Check(name, outcome, critical, 0.0, 0.0)


@pytest.mark.parametrize(
    ("outcomes", "enough", "expected"),
    [
        ([("errors", PASS, True), ("score_ks", PASS, False)], True, PASS),
        ([("errors", FAIL, True), ("score_ks", PASS, False)], True, FAIL),
        ([("errors", PASS, True), ("score_ks", FAIL, False)], True, MARGINAL),
        ([("errors", MARGINAL, True), ("score_ks", PASS, False)], True, MARGINAL),
        ([("errors", PASS, True), ("precision", PENDING, True)], True, PASS),
        ([("errors", FAIL, True)], False, PENDING),
    ],
)
def test_verdict(outcomes: list[tuple[str, str, bool]], enough: bool, expected: str) -> None:
    assert canary.verdict([_c(*o) for o in outcomes], enough) == expected


def test_no_verdict_before_the_minimum_sample() -> None:
    frame = predictions(3_000, percent=5.0, challenger=("2", inverted))
    result = evaluation(frame, GuardConfig(min_rows=1_000), 5.0)  # ~150 canary rows
    assert result.verdict == PENDING
    assert by_name(result)["rank_correlation"].outcome == FAIL  # measured, shown, not acted on


def test_config_refuses_unknown_checks_and_falling_steps() -> None:
    with pytest.raises(ValueError, match="unknown checks"):
        GuardConfig(critical=frozenset({"errors", "speed"}))
    with pytest.raises(ValueError, match="steps"):
        GuardConfig(steps=(50.0, 25.0))


# --- the guard's decisions (Guard.plan: no process, no registry) -----------------------------------
FAST = GuardConfig(steps=(25.0, 50.0), hold=timedelta(hours=1), min_rows=200, watch_hold=timedelta(hours=1))
HOURS2 = 1_440  # rows in two hours, one every 5 s


def serving(champion: str, challenger: str | None, percent: float, **kw: object) -> Serving:
    return Serving(arm(champion), arm(challenger) if challenger else None, {URL: percent}, **kw)  # type: ignore[arg-type]


class Clock:
    """Successive two-hour slices of traffic, each appended to the monitor's frame."""

    def __init__(self) -> None:
        self.frame = pd.DataFrame()
        self.start = T0
        self.slices = 0

    def add(self, **kw: object) -> pd.Timestamp:
        part = predictions(HOURS2, start=self.start, seed=self.slices, prefix=f"s{self.slices}-", **kw)  # type: ignore[arg-type]
        self.frame = pd.concat([self.frame, part], ignore_index=True)
        self.start = part["event_time"].max()
        self.slices += 1
        return self.start


def test_a_good_challenger_goes_shadow_25_50_then_promoted_and_watched(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL], metrics=MonitorMetrics())
    clock = Clock()
    now = clock.add(percent=0.0)
    actions, report = guard.plan(clock.frame, None, now, serving("1", "2", 0.0))
    assert [(a.kind, a.percent, a.audit_as) for a in actions] == [("canary", 25.0, "canary_step")]
    assert report["canary"]["verdict"] == PASS and guard.state.phase == CANARY
    json.dumps(report | {"actions": [a.as_dict() for a in actions]}, allow_nan=False)  # the page and --json

    now = clock.add(percent=25.0)
    actions, report = guard.plan(clock.frame, None, now, serving("1", "2", 25.0))
    assert report["canary"]["rows"]["candidate"] >= FAST.min_rows  # this step's window only
    assert report["canary"]["rows"]["candidate"] < HOURS2 * 0.4
    assert [(a.kind, a.percent) for a in actions] == [("canary", 50.0)]

    now = clock.add(percent=50.0)
    actions, report = guard.plan(clock.frame, None, now, serving("1", "2", 50.0))
    assert [a.kind for a in actions] == ["canary", "promote", "reload"]
    assert actions[0].percent == 0.0 and actions[1].version == "2" and actions[1].predecessor == "1"
    assert guard.state.champion == "2" and guard.state.watch is not None

    # The old champion shadows the new one: the watch is paired, passes, relaxes.
    now = clock.add(champion=("2", retrained), challenger=("1", same))
    actions, report = guard.plan(
        clock.frame, None, now, serving("2", "1", 0.0, former_champions=frozenset({"1", "2"}))
    )
    assert actions == [] and report["watch"]["paired"] and report["watch"]["verdict"] == PASS
    assert guard.state.watch is not None and guard.state.watch["fast_done"]
    assert guard.state.phase == IDLE  # a former champion is never given a canary


def test_a_bad_canary_is_stopped_and_never_restarted(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL])
    clock = Clock()
    now = clock.add(challenger=("3", inverted), percent=25.0)
    guard.plan(clock.frame.iloc[:0], None, clock.frame["event_time"].min(), serving("1", "3", 0.0))
    assert guard.state.phase == SHADOW
    # A person gives it 25 % (the drill): the guard judges the rows since its last tick.
    actions, report = guard.plan(clock.frame, None, now, serving("1", "3", 25.0))
    assert any("changed by hand" in n for n in report["notes"])
    assert len(actions) == 1
    stop = actions[0]
    assert (stop.kind, stop.percent, stop.audit_as) == ("canary", 0.0, "canary_stop")
    assert "rank_correlation fail (critical)" in stop.reason and stop.numbers["percent_from"] == 25.0
    assert stop.numbers["checks"]["rank_correlation"]["outcome"] == FAIL
    assert guard.state.phase == STOPPED and guard.state.blocked == ["3"] and guard.state.champion == "1"
    # It shadows on, it even looks fine now: the guard does not give it a share again.
    now = clock.add(challenger=("3", same))
    actions, _ = guard.plan(clock.frame, None, now, serving("1", "3", 0.0))
    assert actions == [] and guard.state.phase == STOPPED


def test_a_canary_stopped_by_hand_stays_stopped(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL])
    clock = Clock()
    now = clock.add()
    guard.plan(clock.frame, None, now, serving("1", "2", 0.0))
    assert guard.state.percent == 25.0
    now = clock.add(percent=25.0)
    actions, _ = guard.plan(clock.frame, None, now, serving("1", "2", 0.0))
    assert actions == [] and guard.state.phase == STOPPED and "2" in guard.state.blocked


def test_a_restarted_process_gets_the_guards_share_back(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL, "http://other:8000"])
    clock = Clock()
    now = clock.add()
    guard.plan(clock.frame, None, now, serving("1", "2", 0.0))
    restarted = Serving(arm("1"), arm("2"), {URL: 25.0, "http://other:8000": 0.0})
    now = clock.add(percent=25.0)
    actions, _ = guard.plan(clock.frame, None, now, restarted)
    assert actions[0].kind == "canary" and actions[0].percent == 25.0 and actions[0].audit_as is None


def test_a_bad_champion_promoted_by_hand_is_rolled_back_once(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL])
    clock = Clock()
    now = clock.add(challenger=None)
    guard.plan(clock.frame, None, now, serving("1", None, 0.0))
    # A person promotes 3 (ranks backwards); 1 does not shadow it: unpaired, against 1's window.
    now = clock.add(champion=("3", inverted), challenger=None)
    moved = serving("3", None, 0.0, last_champion_move="promote", former_champions=frozenset({"1", "3"}))
    actions, report = guard.plan(clock.frame, None, now, moved)
    assert [a.kind for a in actions] == ["rollback", "reload"]
    assert report["watch"]["paired"] is False and report["watch"]["verdict"] == FAIL
    rollback = actions[0]
    assert rollback.check == "review_rate" and rollback.version == "3" and rollback.predecessor == "1"
    assert "review_rate fail (critical)" in rollback.reason
    assert guard.state.champion == "1" and guard.state.blocked == ["3"] and guard.state.watch is None
    # The registry's rollback moved it back: no watch of the restored version, no second rollback.
    now = clock.add(challenger=None)
    restored = serving("1", None, 0.0, last_champion_move="rollback", former_champions=frozenset({"1", "3"}))
    actions, report = guard.plan(clock.frame, None, now, restored)
    assert actions == [] and guard.state.watch is None and "watch" not in report


def test_a_rollback_by_hand_is_not_watched(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL])
    clock = Clock()
    now = clock.add(champion=("2", same), challenger=None)
    guard.plan(clock.frame, None, now, serving("2", None, 0.0))
    moved = serving("1", None, 0.0, last_champion_move="rollback")
    now = clock.add(challenger=None)
    actions, report = guard.plan(clock.frame, None, now, moved)
    assert actions == [] and guard.state.watch is None
    assert any("restored by a rollback" in n for n in report["notes"])


def test_state_survives_a_restart_as_json(embedded_settings: Settings) -> None:
    guard = Guard(embedded_settings, FAST, urls=[URL])
    clock = Clock()
    now = clock.add()
    guard.plan(clock.frame, None, now, serving("1", "2", 0.0))
    now = clock.add(percent=25.0)
    guard.plan(clock.frame, None, now, serving("1", "2", 25.0))
    saved = json.loads(json.dumps(guard.state_dict()))
    again = Guard.from_state(embedded_settings, saved, FAST, urls=[URL])
    assert again.state == guard.state and again.state.percent == 50.0
    # Both take the same next decision on the same rows.
    now = clock.add(percent=50.0)
    first, _ = guard.plan(clock.frame, None, now, serving("1", "2", 50.0))
    second, _ = again.plan(clock.frame, None, now, serving("1", "2", 50.0))
    assert first == second and [a.kind for a in first] == ["canary", "promote", "reload"]
