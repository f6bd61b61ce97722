"""Metric functions of the fraud models: pure, on numpy arrays, each checkable by hand.

The ranking metrics (ROC-AUC, average precision) come from scikit-learn; the ones a
fraud team reads (recall at a false-positive budget, card precision@k per day, expected
calibration error) are spelled out here so that their definitions are in one place.
How sure a difference between two scorers is: `paired_bootstrap_difference`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def _has_both_classes(labels: np.ndarray) -> bool:
    return 0 < int(np.sum(labels)) < len(labels)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold one class only."""
    return float(roc_auc_score(labels, scores)) if _has_both_classes(labels) else float("nan")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise); NaN without fraud."""
    return float(average_precision_score(labels, scores)) if np.sum(labels) > 0 else float("nan")


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """The highest share of fraud caught while flagging at most ``max_fpr`` of legitimate rows.

    Thresholds are placed between distinct scores (tied rows are flagged together), so
    the answer never counts half a tie.
    """
    if not _has_both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def card_precision_at_k(
    card_ids: np.ndarray, days: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 100
) -> float:
    """Card precision@k averaged over days: the share of fraud cards among each day's top k.

    An investigator's daily queue: each card is ranked by its highest score that day and
    counts as fraud if any of its transactions that day is. The denominator is ``k`` even
    on a day with fewer cards, as in Le Borgne et al. (2022), so the metric stays a
    precision of a fixed-size queue.
    """
    frame = pd.DataFrame({"card": card_ids, "day": days, "label": labels, "score": scores})
    per_card = frame.groupby(["day", "card"], sort=True).agg(score=("score", "max"), fraud=("label", "max"))
    per_card = per_card.reset_index().sort_values(["day", "score", "card"], ascending=[True, False, True])
    top = per_card.groupby("day", sort=True).head(k)
    per_day = top.groupby("day")["fraud"].sum() / k
    return float(per_day.mean()) if len(per_day) else float("nan")


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width score bins: sum over bins of (share of rows) × |mean score − fraud rate|."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if len(scores) == 0:
        return float("nan")
    # Bin b holds scores in [b/bins, (b+1)/bins); a score of exactly 1.0 goes to the last bin.
    index = np.minimum((scores * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(index):
        members = index == b
        total += members.mean() * abs(scores[members].mean() - labels[members].mean())
    return float(total)


def calibration_curve(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean score, fraud rate and row count per equal-width score bin (for the plot and the card)."""
    index = np.minimum((np.asarray(scores) * bins).astype(int), bins - 1)
    frame = pd.DataFrame({"bin": index, "score": scores, "label": labels})
    return frame.groupby("bin").agg(
        mean_score=("score", "mean"), fraud_rate=("label", "mean"), rows=("label", "size")
    )


class Difference(NamedTuple):
    """A metric of scorer A minus the same metric of scorer B, with its bootstrap interval."""

    diff: float
    low: float
    high: float


MetricFn = Callable[[np.ndarray, np.ndarray], float]
RANKING_METRICS = ("average_precision", "roc_auc")

# Resamples × rows held in memory at once (a few int64 matrices of this many cells, ~32 MB each).
_CHUNK_CELLS = 4_000_000


class _Ranking:
    """One scorer's order of the rows, from which AP and ROC-AUC of any resample follow.

    A resample holds each row as often as it was drawn; copies share a score, so both
    metrics only need, at each fraud row's score, how many drawn rows (fraud or not) rank
    at or above it and strictly above it. So: one sort per scorer, then per resample a
    cumulative sum of the draw counts in that order and sums over the (few) fraud rows.
    """

    def __init__(self, scores: np.ndarray, fraud_rows: np.ndarray) -> None:
        self.order = np.argsort(-scores, kind="stable")
        ranked = scores[self.order]
        last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]
        first_of_tie = np.r_[True, ranked[:-1] != ranked[1:]]
        position = np.empty(len(scores), dtype=np.int64)
        position[self.order] = np.arange(len(scores))
        # For each fraud row, the sorted positions that end its tie group and the one before it.
        group_end = np.flatnonzero(last_of_tie)
        group_start = np.flatnonzero(first_of_tie)
        group = np.cumsum(first_of_tie) - 1
        fraud_group = group[position[fraud_rows]]
        # The fraud rows best score first; sums over them do not depend on their order.
        self.fraud_order = np.argsort(fraud_group, kind="stable")
        fraud_group = fraud_group[self.fraud_order]
        self.through = group_end[fraud_group] + 1  # rows at or above: cumulative count up to here
        self.before = group_start[fraud_group]  # rows strictly above
        # The same among the fraud rows alone (their own cumulative count, ties together).
        self.fraud_through = np.searchsorted(fraud_group, fraud_group, side="right")
        self.fraud_before = np.searchsorted(fraud_group, fraud_group, side="left")

    def metrics(self, counts: np.ndarray, fraud_counts: np.ndarray) -> dict[str, np.ndarray]:
        """AP and ROC-AUC per resample; ``counts``: draws of each row (resamples × rows),
        ``fraud_counts``: its fraud rows' columns. NaN where a metric is undefined."""
        size, n = counts.shape
        # int32 on purpose: numpy's int64 cumsum along rows is ~7x slower (measured), and a
        # count of rows fits. np.take, not counts[:, order]: half the time for the same copy.
        ranked_by = np.zeros((size, n + 1), dtype=np.int32)
        np.cumsum(np.take(counts, self.order, axis=1), axis=1, dtype=np.int32, out=ranked_by[:, 1:])
        at = ranked_by[:, self.through].astype(float)
        above = ranked_by[:, self.before].astype(float)
        fraud_counts = fraud_counts[:, self.fraud_order]
        fraud_by = np.zeros((size, fraud_counts.shape[1] + 1))
        np.cumsum(fraud_counts, axis=1, out=fraud_by[:, 1:])
        fraud_at, fraud_above = fraud_by[:, self.fraud_through], fraud_by[:, self.fraud_before]
        positives = fraud_counts.sum(axis=1)
        negatives = n - positives
        legit_at, legit_above = at - fraud_at, above - fraud_above
        with np.errstate(invalid="ignore", divide="ignore"):
            # Each drawn fraud row adds 1/P of recall at its score, at that score's precision.
            precision = np.divide(fraud_at, at, out=np.zeros_like(at), where=at > 0)
            ap = (fraud_counts * precision).sum(axis=1) / positives
            # Each drawn fraud row beats the legitimate rows below its score; ties count half.
            beaten = negatives[:, None] - legit_at + 0.5 * (legit_at - legit_above)
            auc = (fraud_counts * beaten).sum(axis=1) / (positives * negatives)
        return {
            "average_precision": np.where(positives > 0, ap, np.nan),
            "roc_auc": np.where((positives > 0) & (negatives > 0), auc, np.nan),
        }


def bootstrap_draws(n_rows: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The rows of each bootstrap resample (drawn with replacement), in chunks of resamples.

    Every bootstrap here draws through this, so the same seed and row count give the same
    resamples whichever metric is computed and however."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n_rows)
    for start in range(0, n_resamples, chunk):
        yield rng.integers(0, n_rows, size=(min(chunk, n_resamples - start), n_rows))


def bootstrap_ranking_metrics(
    y_true: np.ndarray, scores: dict[str, np.ndarray], n_resamples: int = 1_000, seed: int = 0
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, np.ndarray]]]:
    """AP and ROC-AUC of several scorers on all rows and on the *same* bootstrap resamples.

    Vectorised: one sort per scorer, and per chunk of resamples one ``bincount`` of the
    draws and one cumulative sum per scorer. A resample's value equals scikit-learn's
    ``average_precision_score`` / ``roc_auc_score`` on the resample's rows (NaN where it
    drew no fraud, or no legitimate row for ROC-AUC). The draws depend only on ``seed``
    and the number of rows, so any two calls on the same rows resample alike.

    Returns:
        ``(whole, resampled)``: ``whole[name][metric]`` on all rows, and
        ``resampled[name][metric]``, an array of ``n_resamples`` values.
    """
    labels = np.asarray(y_true)
    n = len(labels)
    arrays = {name: np.asarray(s, dtype=float) for name, s in scores.items()}
    if n == 0 or any(len(s) != n for s in arrays.values()):
        lengths = [len(s) for s in arrays.values()]
        raise ValueError(f"need non-empty scores as long as y_true ({n}): {lengths}")
    fraud_rows = np.flatnonzero(labels == 1)
    rankings = {name: _Ranking(s, fraud_rows) for name, s in arrays.items()}

    def measure(counts: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        fraud_counts = counts[:, fraud_rows].astype(float)
        return {name: ranking.metrics(counts, fraud_counts) for name, ranking in rankings.items()}

    once = measure(np.ones((1, n), dtype=np.int32))
    whole = {name: {m: float(v[0]) for m, v in values.items()} for name, values in once.items()}
    parts = []
    for drawn in bootstrap_draws(n, n_resamples, seed):
        size = len(drawn)
        # How often each row was drawn, per resample: one bincount over rows offset per resample.
        cells = (np.arange(size)[:, None] * n + drawn).ravel()
        counts = np.bincount(cells, minlength=size * n).reshape(size, n).astype(np.int32)
        parts.append(measure(counts))
    resampled = {
        name: {m: np.concatenate([part[name][m] for part in parts]) for m in RANKING_METRICS}
        for name in arrays
    }
    return whole, resampled


def percentile_interval(diff: float, resampled: np.ndarray, confidence: float = 0.95) -> Difference:
    """The percentile interval of resampled differences (undefined resamples left out)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    finite = resampled[np.isfinite(resampled)]
    if len(finite) == 0:
        return Difference(diff, float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Difference(diff, float(low), float(high))


def paired_bootstrap_difference(
    y_true: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    metric: str | MetricFn = "average_precision",
    n_resamples: int = 1_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Difference:
    """metric(A) − metric(B) on the same rows, with a paired bootstrap percentile interval.

    Each resample draws the rows with replacement and scores *both* scorers on those same
    rows, so what the two share (which rows are hard) cancels in the difference: the
    interval is that of the difference, much narrower than two separate intervals suggest.
    Resamples in which the metric is undefined (no fraud drawn) are left out.

    ``metric``: ``"average_precision"`` or ``"roc_auc"`` (vectorised, see
    `bootstrap_ranking_metrics`), or any ``f(y_true, scores) -> float``, called on each
    resample's rows (slow, general). Both ways draw the same resamples for the same seed.

    Returns:
        ``(diff, low, high)``: the difference on all rows and the interval's bounds.
    """
    labels = np.asarray(y_true)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    n = len(labels)
    if not len(a) == len(b) == n or n == 0:
        raise ValueError(f"need equal, non-empty lengths; got {n}, {len(a)}, {len(b)}")
    if isinstance(metric, str):
        if metric not in RANKING_METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {RANKING_METRICS} or pass a function")
        whole, resampled = bootstrap_ranking_metrics(labels, {"a": a, "b": b}, n_resamples, seed)
        diff = whole["a"][metric] - whole["b"][metric]
        return percentile_interval(diff, resampled["a"][metric] - resampled["b"][metric], confidence)
    differences = [
        metric(labels[rows], a[rows]) - metric(labels[rows], b[rows])
        for drawn in bootstrap_draws(n, n_resamples, seed)
        for rows in drawn
    ]
    diff = float(metric(labels, a) - metric(labels, b))
    return percentile_interval(diff, np.array(differences), confidence)
