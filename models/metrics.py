"""Metric functions of the fraud models: pure, on numpy arrays, each checkable by hand.

The ranking metrics (ROC-AUC, average precision) come from scikit-learn; the ones a
fraud team reads (recall at a false-positive budget, card precision@k per day, expected
calibration error) are spelled out here so that their definitions are in one place.
"""

from __future__ import annotations

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
