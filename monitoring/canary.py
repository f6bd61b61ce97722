"""Canary analysis: the guard's checks on two models, paired on the same transactions.

Judged as Kayenta judges a canary: each check has a threshold and a ``critical`` flag, and
comes out ``pass``, ``marginal`` or ``fail`` (``pending`` while it cannot be measured); no
verdict before a minimum sample. The guard that acts on the verdicts as Flagger and Argo
Rollouts step a rollout (shadow → 5 → 25 → 50 % → promote, then the watch that rolls a new
champion back) is `monitoring.rollback.Guard`; this module only measures.

What those tools cannot do and this guard does: compare the two models on the *same*
transactions. The prediction log carries both arms' scores for a row (on champion rows the
challenger scores in shadow, on canary rows the champion does), so the shift of the review and
decline rates, the decision flips, the rank agreement and the score distributions are measured
on the same vectors: no population noise between the arms, and from the shadow phase on,
before the challenger decides anything. Each model's decision is its score banded by its own
thresholds (`models.costs.decide`), without the rules' floor, which is the same for both arms.
Errors and latency are the arms' own: which rows each arm served (by card, `in_canary`).

A check fails only on evidence: the estimate beyond its threshold by more than
``z(1 - alpha)`` standard errors (or its confidence bound beyond it); beyond the threshold
without that evidence it is ``marginal``. The guard re-tests a growing window every tick, so
``alpha`` is small (0.01): repeated looks raise the false-stop rate above it.

The checks (`CANARY_CHECKS`), with the reference (champion, or the predecessor of a new
champion) against the candidate (challenger, or the new champion):

* ``errors`` (critical): fallback share of the candidate's rows minus the reference's.
* ``latency`` (critical): the candidate's p99 against the reference's x 1.5 + 2 ms; fails when
  even its lower confidence bound (an order statistic) is above.
* ``review_rate``, ``decline_rate`` (critical): the band's share, candidate minus reference,
  beyond max(absolute, relative x the reference's rate) either way.
* ``rank_correlation`` (critical, paired only): Spearman's rho of the two scores on the same
  rows. Not in Kayenta's list: it is what tells a model that learned nothing (shuffled labels:
  rho ~ -0.1 here, a retrain with another seed 0.96) from one that was merely recalibrated.
* ``flip_rate`` (paired only): share of rows whose decision differs.
* ``score_ks``: KS distance between the two score distributions; fails when its lower bound
  (minus each side's DKW band) is above the threshold.
* ``precision``, ``cost`` (critical, once labels matured; `monitoring.performance`'s truth:
  a decline without an explicit verdict is unknown, never legitimate): the precision of the
  flagged rows (review + decline) must not fall by more than 20 %, the cost per transaction
  (`models.costs.decision_costs`, the reference's cost model) must not rise by more than 20 %.

Non-critical checks can only make the verdict marginal, which holds a step; they are
non-critical because a good retrain after drift legitimately moves the score distribution and
flips decisions (measured here: a retrain with another seed, KS 0.04 and 0.3 % flips; the MLP
against the LightGBM, KS 0.16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from models.costs import APPROVE, DECLINE, REVIEW, CostModel, Thresholds, decide, decision_costs
from monitoring import drift, performance
from monitoring.metrics import CANARY_CHECKS, CANARY_VERDICTS
from monitoring.performance import PerformanceSettings
from services.scoring.scorer import in_canary

if TYPE_CHECKING:
    from core.settings import Settings

PASS, MARGINAL, FAIL, PENDING = "pass", "marginal", "fail", "pending"
OUTCOMES = (PASS, MARGINAL, FAIL, PENDING)
assert set(CANARY_VERDICTS) == set(OUTCOMES)
REFERENCE, CANDIDATE, PAIRED = "reference", "candidate", "paired"


@dataclass(frozen=True)
class GuardConfig:
    """Every threshold and duration of the guard. Durations are event time, so a drill that
    replays days at a speed-up is guarded as the real days would be; a drill sets them short.

    Rollout (Flagger's ``stepWeights``):
      * ``steps``: canary shares in %, in order; after the last one passes: promote.
      * ``hold``: event time each step (and the shadow phase) must pass for before the next.
      * ``min_rows``: rows per arm (paired rows in shadow) before any verdict.
      * ``max_marginal``: a step still marginal this long after its hold is stopped (no
        human here to decide what Kayenta leaves to one).
      * ``start_from_shadow``: a new challenger that passes its shadow phase gets the first
        step by itself; False: it waits for a person to give it a share.
      * ``keep_predecessor``: on promotion the old champion becomes the challenger, so it
        keeps shadowing and the rollback watch compares paired, on the same rows.
    Rollback watch (after any champion change):
      * ``watch_hold``: event time the fast checks must pass before the watch relaxes to
        the matured checks only; ``baseline``: the predecessor's window before the change,
        the unpaired reference when it does not shadow.
    Checks: see the module's docstring; ``critical`` names the checks whose failure fails
    the verdict.
    """

    steps: tuple[float, ...] = (5.0, 25.0, 50.0)
    hold: timedelta = timedelta(hours=1)
    min_rows: int = 1_000
    max_marginal: timedelta = timedelta(hours=2)
    start_from_shadow: bool = True
    keep_predecessor: bool = True
    watch_hold: timedelta = timedelta(hours=1)
    baseline: timedelta = timedelta(hours=24)
    alpha: float = 0.01
    errors_margin: float = 0.01  # fallback share, absolute
    latency_ratio: float = 1.5
    latency_slack_ms: float = 2.0
    review_abs: float = 0.002  # shifts below 0.2 points pass whatever the relative change
    review_rel: float = 0.5
    decline_abs: float = 0.002
    decline_rel: float = 0.5
    rank_min: float = 0.3
    flip_max: float = 0.02
    ks_max: float = 0.3
    precision_drop: float = 0.2  # relative
    cost_rise: float = 0.2  # relative, per transaction
    min_matured_rows: int = 500
    min_matured_flagged: int = 30
    performance_settings: PerformanceSettings = field(default_factory=PerformanceSettings)  # maturity, truth
    critical: frozenset[str] = frozenset(
        {"errors", "latency", "review_rate", "decline_rate", "rank_correlation", "precision", "cost"}
    )

    def __post_init__(self) -> None:
        if (
            not self.steps
            or any(not 0 < s <= 100 for s in self.steps)
            or list(self.steps) != sorted(self.steps)
        ):
            raise ValueError(f"steps must rise within (0, 100], got {self.steps}")
        if self.min_rows < 10 or not 0 < self.alpha < 0.5:
            raise ValueError(f"need min_rows >= 10 and alpha in (0, 0.5); got {self.min_rows}, {self.alpha}")
        unknown = set(self.critical) - set(CANARY_CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}: {', '.join(CANARY_CHECKS)}")

    @property
    def z(self) -> float:
        return float(stats.norm.ppf(1 - self.alpha))


@dataclass(frozen=True)
class Arm:
    """A model version as the guard needs it: its thresholds and the cost model stored with it."""

    version: str
    thresholds: Thresholds
    cost: CostModel = field(default_factory=CostModel)

    def decide(self, scores: Any) -> np.ndarray:
        return decide(np.asarray(scores, dtype=float), self.thresholds)


def read_arm(settings: Settings, version: str) -> Arm:
    """A registered version's thresholds and cost model (its metadata.json; versions never change)."""
    from models import registry

    metadata = registry.load_version(settings, version=version).metadata
    cost = CostModel(**metadata["cost_model"]) if "cost_model" in metadata else CostModel()
    return Arm(str(version), Thresholds.from_dict(metadata["thresholds"]), cost)


# --- the rows each check reads -------------------------------------------------------------
# The prediction frame's columns the checks read (the feature columns are left behind: copying
# them made a window of 500,000 rows 4x slower).
COLUMNS = (
    "transaction_id",
    "card_id",
    "event_time",
    "score",
    "decision",
    "served_by",
    "model_version",
    "challenger_version",
    "challenger_score",
    "champion_version",
    "champion_score",
    "latency_ms",
    "amount",
)


def window(predictions: pd.DataFrame, since: datetime | None, now: datetime) -> pd.DataFrame:
    """Rows with ``since < event_time <= now`` (all up to ``now`` if since is None), `COLUMNS` only."""
    t = predictions["event_time"]
    keep = t <= pd.Timestamp(now)
    if since is not None:
        keep &= t > pd.Timestamp(since)
    return predictions.loc[keep.to_numpy(), [c for c in COLUMNS if c in predictions.columns]]


def arm_rows(rows: pd.DataFrame, version: str, *, canary: bool, percent: float) -> pd.DataFrame:
    """The rows one arm served: decided by ``version`` (as champion, or as canary), plus its
    fallbacks. A fallback that no model scored (model_version None) belongs to the arm its
    card's bucket sends it to (`in_canary`, the scoring service's own function)."""
    served, model = rows["served_by"], rows["model_version"]
    fallback = served == "fallback"
    own = ((served == ("canary" if canary else "champion")) | fallback) & (model == version)
    unscored = rows.loc[fallback & model.isna(), "card_id"]
    if len(unscored):
        in_arm = unscored.map(lambda card: in_canary(str(card), percent)) == canary
        own.loc[in_arm.index[in_arm.to_numpy()]] = True
    return rows[own]


def paired_rows(rows: pd.DataFrame, reference: str, candidate: str) -> pd.DataFrame:
    """Rows scored by both versions (one decided, the other shadowed), with ``reference_score``
    and ``candidate_score``. Fallback rows are left out: their vector is the degraded one."""
    served = rows["served_by"]
    canary = (served == "canary").to_numpy()
    decided = canary | (served == "champion").to_numpy()
    shadow_version = np.where(canary, rows["champion_version"], rows["challenger_version"])
    shadow_score = np.where(canary, rows["champion_score"], rows["challenger_score"]).astype(float)
    model = rows["model_version"].to_numpy()
    by_reference = decided & (model == reference) & (shadow_version == candidate)
    by_candidate = decided & (model == candidate) & (shadow_version == reference)
    score = rows["score"].to_numpy(dtype=float)
    reference_score = np.where(by_reference, score, shadow_score)
    candidate_score = np.where(by_candidate, score, shadow_score)
    keep = (by_reference | by_candidate) & ~np.isnan(reference_score) & ~np.isnan(candidate_score)
    return rows[keep].assign(reference_score=reference_score[keep], candidate_score=candidate_score[keep])


# --- one check -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One check's result. ``value`` is compared with ``threshold`` as the check's docstring says;
    ``detail`` holds each side's number, the rows and the evidence (standard error or bound)."""

    name: str
    outcome: str
    critical: bool
    value: float | None
    threshold: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "critical": self.critical,
            "value": _number(self.value),
            "threshold": _number(self.threshold),
            "detail": {k: _number(v) if isinstance(v, float) else v for k, v in self.detail.items()},
        }


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _judge(excess: float, se: float, z: float) -> str:
    """``excess``: how far the estimate is beyond its threshold (<= 0: within)."""
    if not math.isfinite(excess):
        return PENDING
    if excess <= 0:
        return PASS
    return FAIL if excess > z * max(se, 0.0) else MARGINAL


def _check(
    config: GuardConfig, name: str, outcome: str, value: float, threshold: float, **detail: Any
) -> Check:
    return Check(name, outcome, name in config.critical, value, threshold, detail)


def _pending(config: GuardConfig, name: str, why: str) -> Check:
    return Check(name, PENDING, name in config.critical, None, None, {"why": why})


def errors_check(config: GuardConfig, reference: pd.DataFrame, candidate: pd.DataFrame) -> Check:
    """Fallback share, candidate minus reference; fails above ``errors_margin``."""
    if reference.empty or candidate.empty:
        return _pending(config, "errors", "an arm served no rows")
    r, c = (float((rows["served_by"] == "fallback").mean()) for rows in (reference, candidate))
    se = math.sqrt(r * (1 - r) / len(reference) + c * (1 - c) / len(candidate))
    diff = c - r
    outcome = _judge(diff - config.errors_margin, se, config.z)
    return _check(config, "errors", outcome, diff, config.errors_margin, reference=r, candidate=c, se=se)


def latency_check(config: GuardConfig, reference: pd.DataFrame, candidate: pd.DataFrame) -> Check:
    """The candidate's p99 (ms) against the reference's x ratio + slack. Fails when the p99's
    lower confidence bound is above: the k-th smallest latency, k the ``alpha`` quantile of
    Binomial(n, 0.99), is below the true p99 with probability >= 1 - alpha."""
    ref = reference["latency_ms"].dropna().to_numpy(dtype=float)
    cand = np.sort(candidate["latency_ms"].dropna().to_numpy(dtype=float))
    if ref.size == 0 or cand.size == 0:
        return _pending(config, "latency", "an arm served no rows")
    ref_p99, cand_p99 = float(np.quantile(ref, 0.99)), float(np.quantile(cand, 0.99))
    limit = ref_p99 * config.latency_ratio + config.latency_slack_ms
    k = int(stats.binom.ppf(config.alpha, cand.size, 0.99))
    lower = float(cand[k - 1]) if k >= 1 else -math.inf
    outcome = PASS if cand_p99 <= limit else FAIL if lower > limit else MARGINAL
    return _check(
        config, "latency", outcome, cand_p99, limit, reference=ref_p99, candidate=cand_p99, lower=lower
    )


def rate_check(
    config: GuardConfig,
    band: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    paired: bool,
) -> Check:
    """The share of ``band`` among the decisions, candidate minus reference; fails beyond
    max(absolute, relative x the reference's rate) either way. Paired: the standard error of
    the per-row differences (rows that both arms band alike add nothing to it)."""
    name, absolute, relative = (
        ("review_rate", config.review_abs, config.review_rel)
        if band == REVIEW
        else ("decline_rate", config.decline_abs, config.decline_rel)
    )
    if reference.size == 0 or candidate.size == 0:
        return _pending(config, name, "no rows")
    in_ref, in_cand = (reference == band).astype(float), (candidate == band).astype(float)
    r, c = float(in_ref.mean()), float(in_cand.mean())
    if paired:
        differences = in_cand - in_ref
        se = (
            float(differences.std(ddof=1) / math.sqrt(differences.size)) if differences.size > 1 else math.inf
        )
    else:
        se = math.sqrt(r * (1 - r) / in_ref.size + c * (1 - c) / in_cand.size)
    limit = max(absolute, relative * r)
    outcome = _judge(abs(c - r) - limit, se, config.z)
    return _check(config, name, outcome, c - r, limit, reference=r, candidate=c, se=se, paired=paired)


def rank_check(config: GuardConfig, pairs: pd.DataFrame) -> Check:
    """Spearman's rho of the two scores on the same rows; fails below ``rank_min`` (Fisher's z,
    standard error 1.03 / sqrt(n - 3) for Spearman). A constant score ranks nothing: rho 0."""
    n = len(pairs)
    if n < 10:
        return _pending(config, "rank_correlation", "needs paired rows (the other arm's shadow)")
    ref, cand = pairs["reference_score"].to_numpy(float), pairs["candidate_score"].to_numpy(float)
    constant = np.ptp(ref) == 0 or np.ptp(cand) == 0
    rho = 0.0 if constant else float(stats.spearmanr(ref, cand).statistic)
    clip = 1 - 1e-9
    excess = math.atanh(min(max(config.rank_min, -clip), clip)) - math.atanh(min(max(rho, -clip), clip))
    outcome = _judge(excess, 1.03 / math.sqrt(n - 3), config.z)
    return _check(config, "rank_correlation", outcome, rho, config.rank_min, rows=n)


def flip_check(config: GuardConfig, reference: np.ndarray, candidate: np.ndarray) -> Check:
    """Share of rows whose two decisions differ; fails above ``flip_max`` (the standard error is
    a binomial share's at the threshold itself)."""
    n = reference.size
    if n == 0:
        return _pending(config, "flip_rate", "needs paired rows (the other arm's shadow)")
    flips = float((reference != candidate).mean())
    se = math.sqrt(config.flip_max * (1 - config.flip_max) / n)
    return _check(
        config, "flip_rate", _judge(flips - config.flip_max, se, config.z), flips, config.flip_max, rows=n
    )


def ks_check(config: GuardConfig, reference: np.ndarray, candidate: np.ndarray) -> Check:
    """KS distance of the two score distributions (`monitoring.drift.ks`); fails when the
    distance minus each side's DKW band at alpha / 2 is still above ``ks_max``: the empirical
    distance is within those bands of the true one (the triangle inequality)."""
    if reference.size == 0 or candidate.size == 0:
        return _pending(config, "score_ks", "no rows")
    distance, p_value = drift.ks(reference, candidate)
    band = math.sqrt(math.log(4 / config.alpha) / 2) * (
        1 / math.sqrt(reference.size) + 1 / math.sqrt(candidate.size)
    )
    lower = distance - band
    outcome = PASS if distance <= config.ks_max else FAIL if lower > config.ks_max else MARGINAL
    return _check(config, "score_ks", outcome, distance, config.ks_max, lower=lower, p_value=p_value)


def _matured(
    rows: pd.DataFrame, labels: pd.DataFrame, now: datetime, config: GuardConfig
) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows whose day has matured and whose truth is known, with that truth (0/1).

    `monitoring.performance`'s own rules, through its private helpers (one definition of
    maturity and truth): approved and reviewed rows are fraud with a fraud label, legitimate
    otherwise; a decline is known only through an explicit verdict."""
    if rows.empty or labels is None or labels.empty:
        return rows.iloc[:0], np.empty(0)
    joined = performance.join_labels(rows, labels, now)
    settings = config.performance_settings
    matured, _ = performance._matured_rows(joined, performance._utc(now), settings.maturity)
    truth = performance._truth(matured, settings.decline_sources)
    known = ~np.isnan(truth)
    return joined.loc[matured.index[known]], truth[known]


def matured_checks(
    config: GuardConfig,
    reference: Arm,
    candidate: Arm,
    sides: tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, np.ndarray] | None,
    paired: bool,
) -> list[Check]:
    """``precision`` of the flagged rows and ``cost`` per transaction, from matured labels.

    ``sides``: (reference rows, their decisions, truth, candidate rows, decisions, truth);
    paired: the same rows twice. Costs use the reference's cost model for both arms."""
    if sides is None:
        return [_pending(config, name, "no matured labels yet") for name in ("precision", "cost")]
    ref_rows, ref_dec, ref_truth, cand_rows, cand_dec, cand_truth = sides
    checks = []
    ref_flag, cand_flag = ref_dec != APPROVE, cand_dec != APPROVE
    n_ref, n_cand = int(ref_flag.sum()), int(cand_flag.sum())
    if min(n_ref, n_cand) < config.min_matured_flagged:
        checks.append(
            _pending(config, "precision", f"fewer than {config.min_matured_flagged} matured flagged rows")
        )
    else:
        p_ref, p_cand = float(ref_truth[ref_flag].mean()), float(cand_truth[cand_flag].mean())
        limit = p_ref * (1 - config.precision_drop)
        # Unpaired standard error even when paired: overlapping flags make it conservative.
        se = math.sqrt(p_ref * (1 - p_ref) / n_ref + p_cand * (1 - p_cand) / n_cand)
        outcome = _judge(limit - p_cand, se, config.z)
        checks.append(
            _check(
                config,
                "precision",
                outcome,
                p_cand,
                limit,
                reference=p_ref,
                flagged_reference=n_ref,
                flagged_candidate=n_cand,
            )
        )
    if min(len(ref_rows), len(cand_rows)) < config.min_matured_rows:
        checks.append(_pending(config, "cost", f"fewer than {config.min_matured_rows} matured rows"))
        return checks
    cost = reference.cost
    c_ref = decision_costs(ref_dec, ref_truth, ref_rows["amount"].to_numpy(float), cost)
    c_cand = decision_costs(cand_dec, cand_truth, cand_rows["amount"].to_numpy(float), cost)
    diff = float(c_cand.mean() - c_ref.mean())
    if paired:
        se = float((c_cand - c_ref).std(ddof=1) / math.sqrt(c_ref.size))
    else:
        se = math.sqrt(c_ref.var(ddof=1) / c_ref.size + c_cand.var(ddof=1) / c_cand.size)
    limit = config.cost_rise * float(c_ref.mean())
    outcome = _judge(diff - limit, se, config.z)
    checks.append(
        _check(
            config,
            "cost",
            outcome,
            diff,
            limit,
            reference=float(c_ref.mean()),
            candidate=float(c_cand.mean()),
            se=se,
        )
    )
    return checks


# --- all checks, the verdict --------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    verdict: str
    checks: list[Check]
    rows: dict[str, int]
    paired: bool

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.outcome == FAIL]

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "rows": self.rows,
            "paired": self.paired,
            "checks": [c.as_dict() for c in self.checks],
        }


def verdict(checks: Sequence[Check], enough: bool) -> str:
    """Kayenta's rule: fail if a critical check fails, marginal if any other check fails or
    is marginal, pass otherwise; pending checks do not count; pending below the sample."""
    if not enough:
        return PENDING
    judged = [c for c in checks if c.outcome != PENDING]
    if any(c.critical and c.outcome == FAIL for c in judged):
        return FAIL
    if any(c.outcome in (FAIL, MARGINAL) for c in judged):
        return MARGINAL
    return PASS


def evaluate(
    config: GuardConfig,
    reference: Arm,
    candidate: Arm,
    *,
    reference_rows: pd.DataFrame,
    candidate_rows: pd.DataFrame,
    pairs: pd.DataFrame | None,
    labels: pd.DataFrame | None,
    now: datetime,
    needs: Sequence[str],
) -> Evaluation:
    """Every check of ``candidate`` against ``reference``; a verdict once each count in ``needs``
    (``reference``, ``candidate``, ``paired`` rows) reaches ``config.min_rows``.

    With ``pairs`` (rows both scored), the decision and score checks read them; without, they
    compare the arms' own rows (unpaired: flips and rank agreement cannot be measured)."""
    use_pairs = pairs is not None and len(pairs) > 0
    rows = {
        REFERENCE: len(reference_rows),
        CANDIDATE: len(candidate_rows),
        PAIRED: 0 if pairs is None else len(pairs),
    }
    checks = [
        errors_check(config, reference_rows, candidate_rows),
        latency_check(config, reference_rows, candidate_rows),
    ]
    if use_pairs:
        assert pairs is not None
        ref_scores, cand_scores = (
            pairs["reference_score"].to_numpy(float),
            pairs["candidate_score"].to_numpy(float),
        )
    else:
        ref_scores, cand_scores = (
            reference_rows["score"].to_numpy(float),
            candidate_rows["score"].to_numpy(float),
        )
    ref_dec, cand_dec = reference.decide(ref_scores), candidate.decide(cand_scores)
    checks += [
        rate_check(config, REVIEW, ref_dec, cand_dec, use_pairs),
        rate_check(config, DECLINE, ref_dec, cand_dec, use_pairs),
    ]
    if use_pairs:
        assert pairs is not None
        checks += [rank_check(config, pairs), flip_check(config, ref_dec, cand_dec)]
    else:
        checks += [
            _pending(config, name, "unpaired: the reference does not shadow")
            for name in ("rank_correlation", "flip_rate")
        ]
    checks.append(ks_check(config, ref_scores, cand_scores))
    checks += matured_checks(
        config,
        reference,
        candidate,
        _matured_sides(
            config,
            reference,
            candidate,
            reference_rows,
            candidate_rows,
            pairs if use_pairs else None,
            labels,
            now,
        ),
        use_pairs,
    )
    order = {name: i for i, name in enumerate(CANARY_CHECKS)}
    checks.sort(key=lambda c: order[c.name])
    enough = all(rows[need] >= config.min_rows for need in needs)
    return Evaluation(verdict(checks, enough), checks, rows, use_pairs)


def _matured_sides(
    config: GuardConfig,
    reference: Arm,
    candidate: Arm,
    reference_rows: pd.DataFrame,
    candidate_rows: pd.DataFrame,
    pairs: pd.DataFrame | None,
    labels: pd.DataFrame | None,
    now: datetime,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, pd.DataFrame, np.ndarray, np.ndarray] | None:
    if labels is None or labels.empty:
        return None
    if pairs is not None:
        rows, truth = _matured(pairs, labels, now, config)
        if rows.empty:
            return None
        ref_dec = reference.decide(rows["reference_score"])
        cand_dec = candidate.decide(rows["candidate_score"])
        return rows, ref_dec, truth, rows, cand_dec, truth
    ref, ref_truth = _matured(reference_rows, labels, now, config)
    cand, cand_truth = _matured(candidate_rows, labels, now, config)
    if ref.empty or cand.empty:
        return None
    return ref, reference.decide(ref["score"]), ref_truth, cand, candidate.decide(cand["score"]), cand_truth
