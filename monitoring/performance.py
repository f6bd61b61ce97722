"""Model performance with delayed labels: what the scores promise now, what the labels confirm later.

A chargeback arrives days to weeks after its transaction, and some fraud is never reported,
so yesterday's precision cannot be read from yesterday's labels. Three views, each per
decision day (the UTC day of ``event_time``) x ``served_by`` x ``model_version``:

* `estimate` — label-free, from the calibrated scores alone (the idea of NannyML's CBPE,
  confidence-based performance estimation): expected fraud rate, expected precision of the
  review and decline bands, expected recall. Available at once, for every day.
* `matured` — realised, from the labels, for the days old enough that most labels have
  arrived (``now - day_end >= maturity``), with bootstrap 95 % intervals.
* `compare` — both side by side on the matured days: where they part, the model's
  calibration or the world has changed.

What the monitor calls, say once an hour (the consumer that keeps the frame is not here):

    frame = join_labels(predictions, labels, now)   # predictions + the labels known at `now`
    expected = estimate(frame, cost=cost)           # CBPE, every day, instant
    realised = matured(frame, now, cost)            # matured days only, with intervals
    side = compare(frame, now, cost)                # expected next to realised, one row a metric
    publish_performance(metrics, expected, realised)  # MonitorMetrics gauges

The frame: one row a prediction (DESIGN.md §2) — ``card_id``, ``event_time``, ``score``,
``decision``, ``served_by``, ``model_version`` (None: the rules decided) — with ``amount``
for costs (the prediction record has none: take it from the transaction, or
``expm1(features["amount_log"])``) and the label known so far: ``is_fraud`` (NaN when none),
``reported_at``, ``source`` (what `join_labels` adds).

``now`` is on the labels' clock: ``reported_at`` and ``event_time`` are compared with it.
In production that is the wall clock; in a replay of simulated days it is the event time
reached (the latest ``event_time`` or ``reported_at`` consumed), never ``scored_at``.

Declined transactions never settle, so they never produce a chargeback: in an issuer's data
a declined row without a label is *unknown*, not legitimate. Here it stays unknown (NaN) in
every realised metric: only a verdict from ``PerformanceSettings.decline_sources`` (analyst,
customer) labels a decline; a chargeback on a declined row (which the simulator produces,
as it labels fraud whatever the decision) is ignored by default. Hence the precision of the
decline band is not measurable from chargebacks; `matured` reports what is: the decline
share, the bounds of its precision (every unknown legitimate / every unknown fraud), and the
precision among declines that got an explicit verdict. Recall is measured over the approved
and reviewed rows only (the share of the fraud the model let through the decline band that
review caught), and the ranking metrics (AP, card precision@k) on those rows too.

An approved or reviewed row without a label once its day has matured counts as legitimate:
that is the chargeback process's own convention, and why maturity matters. The share of
the fraud labels expected to have arrived by then is `label_delay(...).share_by(age)`:
empirical where enough old labels exist, else the simulator's parameters (a log-normal delay,
median 10 days, sigma 0.75, clipped to 1-60 days; 5 % of fraud never reported), which put
88 % of the fraud labelled 30 days after the transaction. `compare` divides realised fraud
counts by that share (``realised_adjusted``), so a matured precision is not read as a fall.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import special

from models.costs import APPROVE, DECLINE, REVIEW, CostModel
from models.metrics import (
    _Ranking,  # the vectorised AP of a resample, shared with bootstrap_ranking_metrics
    average_precision,
    bootstrap_draws,
    card_precision_at_k,
    percentile_interval,
)

if TYPE_CHECKING:
    from monitoring.metrics import MonitorMetrics

DAY = "day"
GROUP_KEYS: tuple[str, ...] = (DAY, "served_by", "model_version")
# The model_version of rows the rules decided (kill switch, no model): their score is the
# rules' points over the maximum, not a calibrated probability.
RULES_VERSION = "rules"
REQUIRED_COLUMNS = ("card_id", "event_time", "score", "decision", "served_by")
LABEL_FIELDS = ("is_fraud", "reported_at", "source")

# The simulator's label delay (pipelines/simulate.py, `_labels`): exp(ln 10 + 0.75·z) days,
# clipped to [1, 60) days; `SimulationParams.unreported_share` of fraud never gets a label.
SIMULATOR_DELAY_MEDIAN_DAYS = 10.0
SIMULATOR_DELAY_SIGMA = 0.75
SIMULATOR_DELAY_MIN_DAYS = 1.0
SIMULATOR_DELAY_MAX_DAYS = 60.0
SIMULATOR_UNREPORTED_SHARE = 0.05

_ONE_DAY = pd.Timedelta(days=1)
_CHUNK_CELLS = 4_000_000  # resamples x rows held at once for AP (int32: 16 MB)


@dataclass(frozen=True)
class PerformanceSettings:
    """When a day counts as matured, how labels are read, how intervals are drawn.

    * ``maturity``: a day is matured once ``now - day_end >= maturity``.
    * ``label_horizon``: the longest label delay considered; transactions older than it are
      the "settled" ones whose labels give the empirical delay distribution.
    * ``min_settled_labels``: fewer settled fraud labels than this and the delay distribution
      is the simulator's, not an empirical one.
    * ``unreported_share``: the share of fraud never reported. Not measurable from labels (an
      unreported fraud leaves no trace): the simulator's 5 %, or the issuer's own estimate.
    * ``decline_sources``: label sources that count on a declined row (a chargeback cannot
      exist on a transaction that never settled).
    """

    maturity: timedelta = timedelta(days=30)
    label_horizon: timedelta = timedelta(days=60)
    min_settled_labels: int = 200
    unreported_share: float = SIMULATOR_UNREPORTED_SHARE
    decline_sources: tuple[str, ...] = ("analyst", "customer")
    k: int = 100  # card precision@k: the investigators' daily queue
    n_resamples: int = 1_000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.maturity < timedelta(0) or self.label_horizon <= timedelta(0):
            raise ValueError(f"maturity {self.maturity} must be >= 0 and horizon {self.label_horizon} > 0")
        if not 0 <= self.unreported_share < 1:
            raise ValueError(f"unreported share must be in [0, 1), got {self.unreported_share}")
        if self.k < 1 or self.n_resamples < 1 or not 0 < self.confidence < 1:
            raise ValueError(
                f"need k >= 1, n_resamples >= 1, confidence in (0, 1); got "
                f"{self.k}, {self.n_resamples}, {self.confidence}"
            )


# --- the frame ---------------------------------------------------------------------------------
def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def join_labels(
    predictions: pd.DataFrame, labels: pd.DataFrame, now: datetime | pd.Timestamp | None = None
) -> pd.DataFrame:
    """Each prediction with the label of its transaction known at ``now`` (all if None).

    Adds ``is_fraud`` (True/False, NaN without a label), ``reported_at`` (NaT) and ``source``.
    Several labels of one transaction: the latest reported wins (an analyst's verdict after a
    customer's claim). A transaction scored twice (a client's retry): its last prediction.
    """
    known = labels
    if now is not None:
        known = known[pd.to_datetime(known["reported_at"], utc=True) <= _utc(now)]
    known = known.sort_values("reported_at", kind="stable").drop_duplicates("transaction_id", keep="last")
    scored = predictions.drop(columns=[c for c in LABEL_FIELDS if c in predictions.columns])
    scored = scored.drop_duplicates("transaction_id", keep="last")
    return scored.merge(
        known[["transaction_id", *LABEL_FIELDS]], on="transaction_id", how="left", validate="one_to_one"
    )


def _prepare(frame: pd.DataFrame, now: pd.Timestamp | None) -> pd.DataFrame:
    """The columns every view reads, normalised; labels reported after ``now`` are dropped."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"the performance frame lacks {', '.join(missing)}")
    decision = frame["decision"].astype(str).to_numpy()
    unknown = set(np.unique(decision)) - {APPROVE, REVIEW, DECLINE}
    if unknown:
        raise ValueError(f"unknown decisions {sorted(unknown)}: approve, review or decline")
    event_time = pd.to_datetime(frame["event_time"], utc=True)
    version = frame["model_version"] if "model_version" in frame.columns else pd.Series(None, frame.index)
    out = pd.DataFrame(
        {
            "card_id": frame["card_id"].astype(str),
            "event_time": event_time,
            DAY: event_time.dt.floor("D"),
            "score": frame["score"].astype(float),
            "decision": decision,
            "served_by": frame["served_by"].astype(str),
            "model_version": version.astype(object).where(version.notna(), RULES_VERSION).astype(str),
            "amount": frame["amount"].astype(float) if "amount" in frame.columns else np.nan,
        },
        index=frame.index,
    )
    is_fraud = frame["is_fraud"] if "is_fraud" in frame.columns else pd.Series(np.nan, frame.index)
    known = is_fraud.notna().to_numpy()
    reported = (
        pd.to_datetime(frame["reported_at"], utc=True)
        if "reported_at" in frame.columns
        else pd.Series(pd.NaT, frame.index, dtype="datetime64[us, UTC]")
    )
    if now is not None and "reported_at" in frame.columns:
        known &= (reported <= now).to_numpy()  # NaT compares False: a label without a time is unknown
    label = np.full(len(frame), np.nan)
    label[known] = is_fraud.to_numpy(dtype=object)[known].astype(bool)
    out["label"] = label
    out["reported_at"] = reported
    source = frame["source"] if "source" in frame.columns else pd.Series(None, frame.index)
    out["source"] = source.astype(object).where(known, None).to_numpy()
    return out


def _truth(prepared: pd.DataFrame, decline_sources: Sequence[str]) -> np.ndarray:
    """1 fraud, 0 legitimate, NaN unknown, for matured rows.

    Approved and reviewed rows: their label, or legitimate without one (no chargeback by
    maturity). Declined rows: a label from ``decline_sources`` only, else unknown — never
    legitimate for want of a chargeback that cannot come.
    """
    label = prepared["label"].to_numpy()
    declined = prepared["decision"].to_numpy() == DECLINE
    counts = prepared["source"].isin(list(decline_sources)).to_numpy() & ~np.isnan(label)
    passed = np.where(np.isnan(label), 0.0, label)
    return np.where(declined, np.where(counts, label, np.nan), passed)


def _groups(prepared: pd.DataFrame, by: Sequence[str]) -> Any:
    unknown = [k for k in by if k not in GROUP_KEYS]
    if unknown:
        raise ValueError(f"can only group by {', '.join(GROUP_KEYS)}; not {', '.join(unknown)}")
    return prepared.groupby(list(by), sort=True)


def _empty(by: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays([[] for _ in by], names=list(by))
    return pd.DataFrame(columns=list(columns), index=index if len(by) > 1 else index.get_level_values(0))


# --- 1. the label-free estimate --------------------------------------------------------------
ESTIMATE_COLUMNS = [
    "rows",
    "review_share",
    "decline_share",
    "expected_fraud_rate",
    "expected_fraud_rate_passed",
    "expected_fraud_rate_passed_sd",
    "expected_precision_review",
    "expected_precision_review_sd",
    "expected_precision_decline",
    "expected_precision_decline_sd",
    "expected_recall",
    "expected_recall_sd",
    "expected_recall_review",
    "expected_recall_review_sd",
    "expected_cost",
    "expected_cost_approve_all",
    "expected_savings",
    "expected_savings_review",
    "expected_savings_review_sd",
    "scores_calibrated",
]
_EXPECTED_COSTS = [c for c in ESTIMATE_COLUMNS if "cost" in c or "savings" in c]


def _ratio(a: Any, b: Any) -> Any:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _ratio_sd(a: Any, b: Any, var_a: Any, var_b: Any) -> Any:
    """Delta-method sd of a / (a + b) for independent sums a, b with variances var_a, var_b."""
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            total > 0, np.sqrt(b**2 * var_a + a**2 * var_b) / np.where(total > 0, total, 1) ** 2, np.nan
        )


def estimate(
    frame: pd.DataFrame, by: Sequence[str] = GROUP_KEYS, cost: CostModel | None = None
) -> pd.DataFrame:
    """What the calibrated scores promise, without a single label (CBPE), per group of ``by``.

    If the scores are calibrated, a row scored ``p`` is fraud with probability ``p``: so the
    expected fraud rate is the mean score, the expected precision of a band the mean score
    of its rows, the expected recall of review + decline the share of the score mass in
    those bands; costs likewise (an approved row costs ``p·amount`` in expectation, a
    declined one ``(1-p)·false_decline_share·amount``). Each ``*_sd`` is the sampling
    spread of the realised value around the expected one when the scores *are* calibrated
    (independent Bernoulli rows; delta method for ratios): a realised value several sd off
    is a signal. The decline band's expected precision is the one figure of that band no
    label will confirm (declines get no chargeback).

    Columns (per group): ``rows``, ``review_share``, ``decline_share``,
    ``expected_fraud_rate``, ``expected_fraud_rate_passed`` (approved + reviewed rows, what
    `matured` measures), ``expected_precision_review``/``_decline``, ``expected_recall``
    (review + decline over all fraud), ``expected_recall_review`` (review over approved +
    reviewed fraud, what `matured` measures), ``expected_cost``, ``expected_cost_approve_all``,
    ``expected_savings`` (NaN without ``amount`` or ``cost``), ``expected_savings_review``
    (approved + reviewed rows), and ``scores_calibrated`` (False for the rules' rows,
    ``model_version == "rules"``, whose score is points, not a probability).

    BLIND TO CONCEPT DRIFT. The estimate believes the scores. When fraud changes while the
    inputs do not (a new pattern the model scores low), the score distribution, and so every
    number here, stays where it was while the real recall falls: the new fraud hides among
    the confident approvals. Only labels see that (`matured`, `compare`); the estimate sees
    covariate shift only, and is exact only while calibration holds.
    """
    prepared = _prepare(frame, None)
    if prepared.empty:
        return _empty(by, ESTIMATE_COLUMNS)
    p = prepared["score"].to_numpy()
    decision = prepared["decision"].to_numpy()
    amount = prepared["amount"].to_numpy()
    bands = {"app": decision == APPROVE, "rev": decision == REVIEW, "dec": decision == DECLINE}
    parts: dict[str, np.ndarray] = {"n": np.ones(len(p)), "p": p}
    for name, rows in bands.items():
        parts[name] = rows.astype(float)
        parts[f"p_{name}"] = np.where(rows, p, 0.0)
        parts[f"v_{name}"] = np.where(rows, p * (1 - p), 0.0)
    if cost is not None:
        parts["cost"] = np.select(
            [bands["app"], bands["rev"]],
            [p * amount, np.full(len(p), cost.review_cost)],
            (1 - p) * cost.false_decline_share * amount,
        )
        parts["approve_all"] = p * amount
        parts["saved_rev"] = np.where(bands["rev"], p * amount - cost.review_cost, 0.0)
        parts["v_saved_rev"] = np.where(bands["rev"], p * (1 - p) * amount**2, 0.0)
    sums = pd.DataFrame(parts, index=prepared.index).groupby([prepared[k] for k in by], sort=True).sum()
    calibrated = _groups(prepared, by)["model_version"].agg(lambda v: bool((v != RULES_VERSION).all()))
    s = {c: sums[c].to_numpy() for c in sums.columns}
    passed, p_passed = s["app"] + s["rev"], s["p_app"] + s["p_rev"]
    out = pd.DataFrame(index=sums.index)
    out["rows"] = s["n"].astype(int)
    out["review_share"] = s["rev"] / s["n"]
    out["decline_share"] = s["dec"] / s["n"]
    out["expected_fraud_rate"] = s["p"] / s["n"]
    out["expected_fraud_rate_passed"] = _ratio(p_passed, passed)
    out["expected_fraud_rate_passed_sd"] = _ratio(np.sqrt(s["v_app"] + s["v_rev"]), passed)
    for band, short in ((REVIEW, "rev"), (DECLINE, "dec")):
        out[f"expected_precision_{band}"] = _ratio(s[f"p_{short}"], s[short])
        out[f"expected_precision_{band}_sd"] = _ratio(np.sqrt(s[f"v_{short}"]), s[short])
    flagged, var_flagged = s["p_rev"] + s["p_dec"], s["v_rev"] + s["v_dec"]
    out["expected_recall"] = _ratio(flagged, s["p"])
    out["expected_recall_sd"] = _ratio_sd(flagged, s["p_app"], var_flagged, s["v_app"])
    out["expected_recall_review"] = _ratio(s["p_rev"], p_passed)
    out["expected_recall_review_sd"] = _ratio_sd(s["p_rev"], s["p_app"], s["v_rev"], s["v_app"])
    if cost is not None:
        out["expected_cost"] = s["cost"]
        out["expected_cost_approve_all"] = s["approve_all"]
        out["expected_savings"] = s["approve_all"] - s["cost"]
        out["expected_savings_review"] = s["saved_rev"]
        out["expected_savings_review_sd"] = np.sqrt(s["v_saved_rev"])
    else:
        for column in _EXPECTED_COSTS:
            out[column] = np.nan
    out["scores_calibrated"] = calibrated.reindex(out.index).to_numpy()
    return out[ESTIMATE_COLUMNS]


# --- 2. the label delay ------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelDelay:
    """How long a fraud's label takes to arrive, and where that knowledge comes from.

    ``method``: ``"empirical"`` (the delays of labels on settled transactions, those older
    than the horizon, so no label within the horizon is still to come) or ``"simulator"``
    (the simulator's log-normal, too few settled labels). Either way the never-reported
    share is ``unreported_share``, a parameter: labels cannot show what never arrives (an
    empirical horizon also counts labels later than it as never arriving).
    """

    method: Literal["empirical", "simulator"]
    unreported_share: float
    horizon_days: float
    settled_labels: int
    delays_days: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # sorted

    def reported_by(self, age_days: Any) -> np.ndarray:
        """Of the labels that arrive (within the horizon), the share arrived at this age."""
        age = np.asarray(age_days, dtype=float)
        if self.method == "empirical":
            return np.searchsorted(self.delays_days, age, side="right") / len(self.delays_days)
        clipped = np.clip(age, SIMULATOR_DELAY_MIN_DAYS, SIMULATOR_DELAY_MAX_DAYS)
        cdf = special.ndtr(np.log(clipped / SIMULATOR_DELAY_MEDIAN_DAYS) / SIMULATOR_DELAY_SIGMA)
        return np.where(
            age < SIMULATOR_DELAY_MIN_DAYS, 0.0, np.where(age >= SIMULATOR_DELAY_MAX_DAYS, 1.0, cdf)
        )

    def share_by(self, age_days: Any) -> np.ndarray:
        """Of all fraud, the share labelled at this age (reported_by x (1 - unreported_share))."""
        return self.reported_by(age_days) * (1 - self.unreported_share)


def label_delay(
    frame: pd.DataFrame, now: datetime | pd.Timestamp, settings: PerformanceSettings | None = None
) -> LabelDelay:
    """The label delay distribution: empirical from settled transactions where enough fraud
    labels exist (``settings.min_settled_labels``), the simulator's parameters otherwise."""
    settings = settings or PerformanceSettings()
    stamp = _utc(now)
    horizon = pd.Timedelta(settings.label_horizon)
    prepared = _prepare(frame, stamp)
    settled = prepared[(prepared["label"] == 1) & (prepared["event_time"] <= stamp - horizon)]
    delays = ((settled["reported_at"] - settled["event_time"]) / _ONE_DAY).to_numpy(dtype=float)
    delays = np.sort(delays[delays <= horizon / _ONE_DAY])
    horizon_days = horizon / _ONE_DAY
    if len(delays) >= settings.min_settled_labels:
        return LabelDelay("empirical", settings.unreported_share, horizon_days, len(delays), delays)
    return LabelDelay("simulator", settings.unreported_share, horizon_days, len(delays))


# --- 3. the matured cohorts ----------------------------------------------------------------------
# The per-unit sums every realised ratio or sum metric is made of: `_Cohort.per_unit`'s columns.
_SUMS = [
    "rows",
    "approved",
    "reviewed",
    "declined",
    "review_fraud",
    "approve_fraud",
    "decline_fraud",
    "decline_labelled",
    "cost",
    "cost_approve_all",
]
# Realised metrics with an interval: ratios and sums of `_SUMS` (`_metrics_of`), then rankings.
_RATIO_METRICS = ("precision_review", "recall_review", "fraud_rate", "decline_share", "precision_decline")
_SUM_METRICS = ("cost", "cost_approve_all", "savings_review")
_RANKED_METRICS = ("average_precision", "card_precision_at_k")
INTERVAL_METRICS = (*_RATIO_METRICS, *_SUM_METRICS, *_RANKED_METRICS)
MATURED_COLUMNS = [
    "rows",
    "approved",
    "reviewed",
    "declined",
    "labelled_fraud",
    "decline_labelled",
    "decline_known_fraud",
    "decline_known_legit",
    "precision_decline_min",
    "precision_decline_max",
    "review_fraud_amount",
    "age_days",
    "label_share",
    "label_delay_method",
    *[f"{m}{suffix}" for m in INTERVAL_METRICS for suffix in ("", "_low", "_high")],
]


def _metrics_of(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Each ratio and sum metric from the sums (any leading shape; last axis = `_SUMS`)."""
    s = {name: sums[..., i] for i, name in enumerate(_SUMS)}
    return {
        "precision_review": _ratio(s["review_fraud"], s["reviewed"]),
        "recall_review": _ratio(s["review_fraud"], s["review_fraud"] + s["approve_fraud"]),
        "fraud_rate": _ratio(s["review_fraud"] + s["approve_fraud"], s["approved"] + s["reviewed"]),
        "decline_share": _ratio(s["declined"], s["rows"]),
        "precision_decline": _ratio(s["decline_fraud"], s["decline_labelled"]),
        "cost": s["cost"],
        "cost_approve_all": s["cost_approve_all"],
        "savings_review": s["cost_approve_all"] - s["cost"],
    }


@dataclass
class _Cohort:
    """One group's rows, arranged for the cluster bootstrap (the unit: a card on a day)."""

    unit: np.ndarray  # each row's unit
    n_units: int
    per_unit: np.ndarray  # units x len(_SUMS)
    passed: np.ndarray  # rows approved or reviewed
    ranking: _Ranking | None  # AP over the passed rows (None without fraud among them)
    fraud_passed: np.ndarray  # positions of fraud among the passed rows
    queue_units: np.ndarray  # the passed units, by day, then best score first, then card
    queue_fraud: np.ndarray  # is each of them a fraud card that day
    queue_days: list[slice]  # each day's part of the queue


def _cohort(group: pd.DataFrame, truth: np.ndarray, cost: CostModel | None) -> _Cohort:
    decision = group["decision"].to_numpy()
    app, rev, dec = decision == APPROVE, decision == REVIEW, decision == DECLINE
    fraud = truth == 1  # NaN (an unknown decline) is neither fraud...
    known = ~np.isnan(truth)  # ...nor labelled
    amount = group["amount"].to_numpy()
    if cost is None:
        row_cost = approve_all = np.full(len(group), np.nan)
    else:
        # models.costs.decision_costs on the approved and reviewed rows; declines are left out
        # (their cost needs their truth, unknown), so cost and savings are those of review.
        row_cost = np.select([app & fraud, rev], [amount, np.full(len(group), cost.review_cost)], 0.0)
        approve_all = np.where(~dec & fraud, amount, 0.0)
    columns = [
        np.ones(len(group)),
        app,
        rev,
        dec,
        rev & fraud,
        app & fraud,
        dec & fraud,
        dec & known,
        row_cost,
        approve_all,
    ]
    day = group[DAY].dt.tz_convert(None).to_numpy()  # datetime64: 40x cheaper than Timestamps
    unit_keys = pd.MultiIndex.from_arrays([day, group["card_id"].to_numpy()])
    unit, uniques = pd.factorize(unit_keys, sort=True)
    n_units = len(uniques)
    per_unit = np.stack([np.bincount(unit, np.asarray(c, dtype=float), n_units) for c in columns], axis=1)
    passed = ~dec
    scores = group["score"].to_numpy()[passed]
    fraud_passed = np.flatnonzero(fraud[passed])
    ranking = _Ranking(scores, fraud_passed) if len(fraud_passed) else None
    # The card queue (models.metrics.card_precision_at_k's order): per unit its best passed score.
    units = pd.DataFrame({"unit": unit[passed], "score": scores, "fraud": fraud[passed]})
    queue = units.groupby("unit").agg(score=("score", "max"), fraud=("fraud", "max")).reset_index()
    queue["day"] = uniques.get_level_values(0).to_numpy()[queue["unit"].to_numpy()]
    queue["card"] = uniques.get_level_values(1).to_numpy()[queue["unit"].to_numpy()]
    queue = queue.sort_values(["day", "score", "card"], ascending=[True, False, True], ignore_index=True)
    bounds = np.flatnonzero(np.r_[True, queue["day"].to_numpy()[1:] != queue["day"].to_numpy()[:-1], True])
    days = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)] if len(queue) else []
    return _Cohort(
        unit,
        n_units,
        per_unit,
        passed,
        ranking,
        fraud_passed,
        queue["unit"].to_numpy(),
        queue["fraud"].to_numpy(dtype=float),
        days,
    )


def _card_precision(cohort: _Cohort, counts: np.ndarray, k: int) -> np.ndarray:
    """Card precision@k of each resample: a unit drawn twice stands twice in its day's queue."""
    drawn = counts[:, cohort.queue_units]
    per_day, present = [], []
    for day in cohort.queue_days:
        c = drawn[:, day]
        before = np.cumsum(c, axis=1) - c
        taken = np.clip(k - before, 0, c)  # how many copies of each unit make the top k
        per_day.append((taken * cohort.queue_fraud[day]).sum(axis=1) / k)
        present.append(c.sum(axis=1) > 0)
    if not per_day:
        return np.full(len(counts), np.nan)
    values, shown = np.stack(per_day, axis=1), np.stack(present, axis=1)
    return _ratio((values * shown).sum(axis=1), shown.sum(axis=1))


def _average_precision(cohort: _Cohort, counts: np.ndarray) -> np.ndarray:
    if cohort.ranking is None:
        return np.full(len(counts), np.nan)
    unit_of_passed = cohort.unit[cohort.passed]
    step = max(1, _CHUNK_CELLS // max(len(unit_of_passed), 1))
    parts = []
    for start in range(0, len(counts), step):
        rows = counts[start : start + step][:, unit_of_passed].astype(np.int32)
        fraud_counts = rows[:, cohort.fraud_passed].astype(float)
        parts.append(cohort.ranking.metrics(rows, fraud_counts)["average_precision"])
    return np.concatenate(parts)


def _bootstrap(cohort: _Cohort, settings: PerformanceSettings) -> dict[str, np.ndarray]:
    """Every interval metric on the same resamples of units (cards on a day), drawn with
    `models.metrics.bootstrap_draws`. Cards, not rows: one compromised card brings several
    fraud rows, which a row bootstrap would count as independent evidence."""
    parts: list[dict[str, np.ndarray]] = []
    n = cohort.n_units
    for drawn in bootstrap_draws(n, settings.n_resamples, settings.seed):
        size = len(drawn)
        cells = (np.arange(size)[:, None] * n + drawn).ravel()
        counts = np.bincount(cells, minlength=size * n).reshape(size, n)
        values = _metrics_of(counts @ cohort.per_unit)
        values["average_precision"] = _average_precision(cohort, counts)
        values["card_precision_at_k"] = _card_precision(cohort, counts, settings.k)
        parts.append(values)
    return {m: np.concatenate([p[m] for p in parts]) for m in INTERVAL_METRICS}


def _matured_rows(
    frame: pd.DataFrame, now: pd.Timestamp, maturity: timedelta
) -> tuple[pd.DataFrame, pd.Series]:
    prepared = _prepare(frame, now)
    age = now - (prepared[DAY] + _ONE_DAY)
    keep = (age >= pd.Timedelta(maturity)).to_numpy()
    return prepared[keep], age[keep]


def matured(
    frame: pd.DataFrame,
    now: datetime | pd.Timestamp,
    cost: CostModel | None = None,
    settings: PerformanceSettings | None = None,
    by: Sequence[str] = GROUP_KEYS,
    delay: LabelDelay | None = None,
) -> pd.DataFrame:
    """Realised performance of the matured decision days, per group of ``by``, with intervals.

    A day is matured when ``now - day_end >= settings.maturity``; younger days are left out
    (with ``DAY`` not in ``by``, all matured days pool into each group). Only labels
    reported by ``now`` count. Truth (see the module's docstring): approved and reviewed
    rows are fraud with a fraud label and legitimate otherwise; declined rows are labelled
    only by ``settings.decline_sources`` and otherwise UNKNOWN, in no metric as legitimate.

    Columns: counts (``rows``, ``approved``, ``reviewed``, ``declined``, ``labelled_fraud`` among
    approved + reviewed, ``decline_labelled``, ``decline_known_fraud``/``_legit``), the decline
    band's precision bounds (``precision_decline_min``: every unknown decline legitimate,
    ``_max``: every unknown fraud), ``age_days`` (of the day's end, at ``now``), ``label_share``
    (the share of the fraud expected labelled by ``now``, over the rows' own ages, see
    `label_delay`), ``review_fraud_amount`` and ``label_delay_method``;
    then, each with ``_low``/``_high`` (bootstrap percentile interval, ``settings.confidence``):

    * ``precision_review``; ``recall_review``: reviewed fraud over approved + reviewed fraud
      (the declined fraud is unknown, so this is the recall of review among what the decline
      band let through, not the model's recall); ``fraud_rate`` of approved + reviewed rows;
    * ``decline_share``; ``precision_decline``: among declines with an explicit verdict
      (unbiased only if verdicts are not chosen by outcome; the simulator labels fraud only,
      so there it reads 1: read the bounds);
    * ``average_precision`` and ``card_precision_at_k`` (``settings.k``, per day, averaged) of
      the scores over approved + reviewed rows (below the decline threshold: not comparable
      with a training-time AP over all rows);
    * ``cost`` and ``cost_approve_all`` (`models.costs`, ``cost``: the model stored with the
      version) and ``savings_review`` = their difference, over approved + reviewed rows (the
      fraud amount review stopped minus the reviews' cost); NaN without ``cost`` or
      ``amount``. The declines' saving needs their truth: not measured.

    Realised fraud counts miss the labels still to come (1 - ``label_share``): precision and
    fraud rate read low by that factor, recall does not (if delays do not depend on the band).
    `compare` corrects for it. Bootstrap: units are a card on a day (see `_bootstrap`),
    ``settings.n_resamples`` draws from ``settings.seed``.
    """
    settings = settings or PerformanceSettings()
    stamp = _utc(now)
    rows, age = _matured_rows(frame, stamp, settings.maturity)
    if rows.empty:
        return _empty(by, MATURED_COLUMNS)
    delay = delay or label_delay(frame, stamp, settings)
    truth = pd.Series(_truth(rows, settings.decline_sources), index=rows.index)
    age_days = age / _ONE_DAY
    records: dict[Any, dict[str, Any]] = {}
    for key, group in _groups(rows, by):
        y = truth.loc[group.index].to_numpy()
        cohort = _cohort(group, y, cost)
        whole = cohort.per_unit.sum(axis=0)
        point = _metrics_of(whole)
        passed = cohort.passed
        labels = np.where(passed, y, 0.0)
        days = group[DAY].dt.tz_convert(None).to_numpy()[passed]
        point["average_precision"] = np.asarray(average_precision(labels[passed], group["score"][passed]))
        point["card_precision_at_k"] = np.asarray(
            card_precision_at_k(
                group["card_id"].to_numpy()[passed],
                days,
                labels[passed],
                group["score"].to_numpy()[passed],
                settings.k,
            )
        )
        resampled = _bootstrap(cohort, settings)
        counts = dict(zip(_SUMS, whole, strict=True))
        known_fraud = int(counts["decline_fraud"])
        known_legit = int(counts["decline_labelled"] - counts["decline_fraud"])
        n_declined = int(counts["declined"])
        amount = group["amount"].to_numpy()
        record: dict[str, Any] = {
            "rows": int(counts["rows"]),
            "approved": int(counts["approved"]),
            "reviewed": int(counts["reviewed"]),
            "declined": n_declined,
            "labelled_fraud": int(counts["review_fraud"] + counts["approve_fraud"]),
            "decline_labelled": int(counts["decline_labelled"]),
            "decline_known_fraud": known_fraud,
            "decline_known_legit": known_legit,
            "precision_decline_min": known_fraud / n_declined if n_declined else math.nan,
            "precision_decline_max": 1 - known_legit / n_declined if n_declined else math.nan,
            "review_fraud_amount": float(
                np.sum(amount, where=(group["decision"].to_numpy() == REVIEW) & (y == 1))
            ),
            "age_days": float(age_days.loc[group.index].min()),
            "label_share": float(np.mean(delay.share_by((stamp - group["event_time"]) / _ONE_DAY))),
            "label_delay_method": delay.method,
        }
        for metric in INTERVAL_METRICS:
            value = float(point[metric])
            interval = percentile_interval(value, resampled[metric], settings.confidence)
            record[metric] = value
            if not math.isfinite(value):
                record[f"{metric}_low"] = record[f"{metric}_high"] = math.nan
            else:
                record[f"{metric}_low"], record[f"{metric}_high"] = interval.low, interval.high
        records[key] = record
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index = (
        pd.MultiIndex.from_tuples(list(records), names=list(by))
        if len(by) > 1
        else pd.Index([k[0] if isinstance(k, tuple) else k for k in records], name=by[0])
    )
    return out[MATURED_COLUMNS]


# --- 4. estimate next to realised --------------------------------------------------------------
COMPARE_METRICS = (
    "fraud_rate",
    "precision_review",
    "recall_review",
    "precision_decline",
    "recall",
    "savings_review",
)
COMPARE_COLUMNS = [
    "metric",
    "expected",
    "expected_sd",
    "realised",
    "realised_low",
    "realised_high",
    "label_share",
    "realised_adjusted",
    "gap",
    "z",
    "measurable",
    "scores_calibrated",
]


def compare(
    frame: pd.DataFrame,
    now: datetime | pd.Timestamp,
    cost: CostModel | None = None,
    settings: PerformanceSettings | None = None,
    by: Sequence[str] = GROUP_KEYS,
) -> pd.DataFrame:
    """The label-free estimate next to the realised value, on the matured days: one row per
    group x metric (``COMPARE_METRICS``), indexed by ``by``.

    ``realised_adjusted`` corrects the realised fraud counts for the labels still to come
    (divides them by ``label_share``): ``fraud_rate``, ``precision_review`` (capped at 1) and
    ``savings_review``; recall needs none (both its counts miss the same share) and
    ``precision_decline`` (explicit verdicts) gets none. ``gap = realised_adjusted - expected``
    and ``z = gap / expected_sd``: the sd is the spread under calibration only (not the label
    share's uncertainty), so read ``|z|`` of 3 or more as "the scores no longer mean what they
    say". ``measurable`` False (and no gap, no z): ``recall`` (review + decline over all
    fraud), the estimate's alone since declined fraud produces no chargeback;
    ``precision_decline`` unless some decline got a "legitimate" verdict (where only fraud is
    ever labelled, as in the simulator, the labelled declines are all fraud by construction);
    any metric undefined in the group (no review, no fraud).
    """
    settings = settings or PerformanceSettings()
    stamp = _utc(now)
    rows, _ = _matured_rows(frame, stamp, settings.maturity)
    realised = matured(frame, stamp, cost, settings, by)
    if realised.empty:
        return _empty(by, COMPARE_COLUMNS)
    expected = estimate(frame.loc[rows.index], by, cost).reindex(realised.index)
    share = realised["label_share"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        adjusted = {
            "fraud_rate": realised["fraud_rate"].to_numpy() / share,
            "precision_review": np.minimum(realised["precision_review"].to_numpy() / share, 1.0),
            "recall_review": realised["recall_review"].to_numpy(),
            "precision_decline": realised["precision_decline"].to_numpy(),
            "recall": np.full(len(realised), np.nan),
            "savings_review": realised["savings_review"].to_numpy()
            + realised["review_fraud_amount"].to_numpy() * (1 / share - 1),
        }
    expected_of = {
        "fraud_rate": "expected_fraud_rate_passed",
        "precision_review": "expected_precision_review",
        "recall_review": "expected_recall_review",
        "precision_decline": "expected_precision_decline",
        "recall": "expected_recall",
        "savings_review": "expected_savings_review",
    }
    parts = []
    # The labelled declines measure their band only if verdicts go both ways: where every
    # verdict on a decline is "fraud" (the simulator labels fraud only), the ratio is 1 by design.
    both_ways = realised["decline_known_legit"].to_numpy() > 0
    for metric in COMPARE_METRICS:
        measurable = metric != "recall"
        if metric == "precision_decline":
            measurable = both_ways
        values = {
            "metric": metric,
            "expected": expected[expected_of[metric]].to_numpy(dtype=float),
            "expected_sd": expected[f"{expected_of[metric]}_sd"].to_numpy(dtype=float),
            "realised": realised[metric].to_numpy(dtype=float) if metric != "recall" else np.nan,
            "realised_low": realised[f"{metric}_low"].to_numpy(dtype=float) if metric != "recall" else np.nan,
            "realised_high": realised[f"{metric}_high"].to_numpy(dtype=float)
            if metric != "recall"
            else np.nan,
            "label_share": share,
            "realised_adjusted": adjusted[metric],
            "measurable": measurable,
            "scores_calibrated": expected["scores_calibrated"].to_numpy(dtype=bool),
        }
        part = pd.DataFrame(values, index=realised.index)
        part["measurable"] = part["measurable"] & np.isfinite(part["realised_adjusted"])
        part["gap"] = (part["realised_adjusted"] - part["expected"]).where(part["measurable"])
        with np.errstate(invalid="ignore", divide="ignore"):
            part["z"] = part["gap"] / part["expected_sd"]
        parts.append(part)
    out = pd.concat(parts).reset_index()
    out["metric"] = pd.Categorical(out["metric"], COMPARE_METRICS, ordered=True)
    out = out.sort_values([*by, "metric"], kind="stable").set_index(list(by))
    out["metric"] = out["metric"].astype(str)
    return out[COMPARE_COLUMNS]


# --- the estimate's blind spot, measured -------------------------------------------------------
def missed_fraud(
    frame: pd.DataFrame,
    now: datetime | pd.Timestamp,
    days: int = 3,
    settings: PerformanceSettings | None = None,
    by: Sequence[str] = ("served_by", "model_version"),
) -> pd.DataFrame:
    """Fraud the labels found among the passed rows of the last ``days`` matured days, against
    the fraud the scores expected there, pooled per group of ``by``.

    `compare`'s fraud-rate row over several days at once, as counts: ``rows`` (approved +
    reviewed), ``expected_fraud`` (their summed scores), ``labelled_fraud``, ``label_share``,
    ``found_fraud`` (labelled / share: the fraud the labels will have found once all are in),
    ``excess`` (found - expected) and ``z`` (excess over its sd: the scores' own Bernoulli
    spread plus the spread of which frauds are labelled yet). A new fraud pattern the model
    scores low leaves ``expected_fraud`` where it was and raises ``found_fraud``: what no
    label-free estimate can see.
    """
    settings = settings or PerformanceSettings()
    stamp = _utc(now)
    rows, _ = _matured_rows(frame, stamp, settings.maturity)
    columns = ["first_day", "last_day", "rows", "expected_fraud", "expected_fraud_sd", "labelled_fraud"]
    columns += ["label_share", "found_fraud", "excess", "z"]
    if rows.empty:
        return _empty(by, columns)
    recent = rows[rows[DAY] > rows[DAY].max() - pd.Timedelta(days=days)]
    side = compare(frame.loc[recent.index], stamp, None, replace(settings, n_resamples=1), by)
    side = side[side["metric"] == "fraud_rate"]
    passed = recent[recent["decision"] != DECLINE]
    groups = _groups(passed, by)
    out = pd.DataFrame(index=side.index)
    out["first_day"] = recent[DAY].min()
    out["last_day"] = recent[DAY].max()
    out["rows"] = groups.size().reindex(out.index).fillna(0).astype(int)
    n = out["rows"].to_numpy(dtype=float)
    share = side["label_share"].to_numpy(dtype=float)
    out["expected_fraud"] = side["expected"].to_numpy(dtype=float) * n
    out["expected_fraud_sd"] = side["expected_sd"].to_numpy(dtype=float) * n
    out["labelled_fraud"] = side["realised"].to_numpy(dtype=float) * n
    out["label_share"] = share
    out["found_fraud"] = side["realised_adjusted"].to_numpy(dtype=float) * n
    out["excess"] = out["found_fraud"] - out["expected_fraud"]
    # Which of the frauds are labelled yet is binomial(found, share): its spread, scaled up.
    expected = out["expected_fraud"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        labelling_var = expected * (1 - share) / share
        out["z"] = out["excess"] / np.sqrt(out["expected_fraud_sd"].to_numpy() ** 2 + labelling_var)
    return out[columns]


@dataclass
class MissedFraudAlarm:
    """The labels find more fraud than the champion's scores expected, ``days_required`` matured
    days in a row (each judged on the pooled days before it, `missed_fraud`): the scores no
    longer mean what they say. The drift alarm cannot see this; it raises the retraining too.
    """

    days_required: int = 3
    z_threshold: float = 3.0
    streak: int = 0
    streak_since: str | None = None  # the newest matured day when the streak began
    raised_at: str | None = None  # the labels' clock when the streak completed
    since: str | None = None
    latest: dict[str, Any] = field(default_factory=dict)

    def update(self, now: pd.Timestamp, gap: pd.Series | None) -> bool:
        """Count one newly matured day's pooled gap; True when this completes the streak."""
        if gap is None or not np.isfinite(gap["z"]):
            return False
        self.latest = {
            "at": now.isoformat(),
            "last_day": pd.Timestamp(gap["last_day"]).date().isoformat(),
            **{k: round(float(gap[k]), 3) for k in ("expected_fraud", "found_fraud", "label_share", "z")},
        }
        if gap["z"] < self.z_threshold:
            self.streak, self.streak_since = 0, None
            if self.raised_at is not None:  # cleared: a later streak raises a new alarm
                self.raised_at = self.since = None
            return False
        self.streak += 1
        self.streak_since = self.streak_since or pd.Timestamp(gap["last_day"]).isoformat()
        if self.streak >= self.days_required and self.raised_at is None:
            self.raised_at, self.since = now.isoformat(), self.streak_since
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("streak", "streak_since", "raised_at", "since", "latest")}

    def restore(self, content: dict[str, Any]) -> None:
        for key, value in content.items():
            setattr(self, key, value)


# --- metrics -----------------------------------------------------------------------------------
def _latest_by_served(table: pd.DataFrame) -> dict[str, pd.Series]:
    """Per served_by, the row of the latest day (the version with the most rows that day)."""
    if table.empty:
        return {}
    flat = table.reset_index()
    if DAY not in flat.columns or "served_by" not in flat.columns:
        raise ValueError("publish needs tables grouped by day and served_by")
    flat = flat.sort_values([DAY, "rows"], kind="stable")
    return {str(s): part.iloc[-1] for s, part in flat.groupby("served_by")}


def publish_performance(metrics: MonitorMetrics, expected: pd.DataFrame, realised: pd.DataFrame) -> None:
    """The latest day of each into the monitor's gauges (`MonitorMetrics`), per served_by.

    ``expected`` from `estimate`, ``realised`` from `matured`, both grouped by at least
    ``day`` and ``served_by``. A realised decline precision is set only when measurable
    (an explicit verdict on some decline), else NaN.
    """
    for served_by, row in _latest_by_served(expected).items():
        metrics.set_expected_performance(
            served_by,
            day=pd.Timestamp(row[DAY]).to_pydatetime(),
            precision_review=float(row["expected_precision_review"]),
            precision_decline=float(row["expected_precision_decline"]),
            recall=float(row["expected_recall"]),
            savings=float(row.get("expected_savings_review", np.nan)),
        )
    for served_by, row in _latest_by_served(realised).items():
        metrics.set_matured_performance(
            served_by,
            day=pd.Timestamp(row[DAY]).to_pydatetime(),
            precision_review=float(row["precision_review"]),
            precision_decline=float(row["precision_decline"]),
            recall_review=float(row["recall_review"]),
            label_share=float(row["label_share"]),
            savings=float(row.get("savings_review", np.nan)),
        )
