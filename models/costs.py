"""The cost model behind the decision bands, and the choice of the bands' thresholds.

A decision costs money in one of four ways: approved fraud loses its amount; a review
costs an analyst's time whatever the verdict (and stops the fraud); a declined legitimate
purchase costs a share of its amount (lost margin, an annoyed customer); a declined fraud
and an approved legitimate purchase cost nothing. Two thresholds on the calibrated score
split traffic into approve / review / decline, and they are chosen to minimise that cost
on validation data, with the review band capped at a share of traffic (analysts are few).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

APPROVE, REVIEW, DECLINE = "approve", "review", "decline"
NEVER = 2.0  # a threshold above any probability: the band it opens is empty
MAX_CANDIDATES = 400  # cut points tried per threshold; 400² pairs is a few ms


@dataclass(frozen=True)
class CostModel:
    """What each outcome costs, in the transaction's currency."""

    review_cost: float = 5.0
    false_decline_share: float = 0.1
    review_cap: float = 0.02  # at most this share of transactions goes to review

    def validate(self) -> None:
        if self.review_cost < 0:
            raise ValueError(f"review cost must be >= 0, got {self.review_cost}")
        if not 0 <= self.false_decline_share <= 1:
            raise ValueError(f"false-decline share must be in [0, 1], got {self.false_decline_share}")
        if not 0 <= self.review_cap <= 1:
            raise ValueError(f"review cap must be in [0, 1], got {self.review_cap}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """score >= decline → decline; review <= score < decline → review; otherwise approve."""

    review: float
    decline: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Thresholds:
        return cls(review=float(values["review"]), decline=float(values["decline"]))


def decide(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """The decision for each score, as strings."""
    scores = np.asarray(scores)
    return np.where(
        scores >= thresholds.decline, DECLINE, np.where(scores >= thresholds.review, REVIEW, APPROVE)
    )


def decision_costs(
    decisions: np.ndarray, labels: np.ndarray, amounts: np.ndarray, cost: CostModel
) -> np.ndarray:
    """The cost of each decision given the truth."""
    fraud = np.asarray(labels).astype(bool)
    amounts = np.asarray(amounts, dtype=float)
    return np.select(
        [decisions == APPROVE, decisions == REVIEW, decisions == DECLINE],
        [
            np.where(fraud, amounts, 0.0),
            np.full(len(amounts), cost.review_cost),
            np.where(fraud, 0.0, cost.false_decline_share * amounts),
        ],
    )


def total_cost(
    scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, thresholds: Thresholds, cost: CostModel
) -> float:
    return float(decision_costs(decide(scores, thresholds), labels, amounts, cost).sum())


def choose_thresholds(
    scores: np.ndarray, labels: np.ndarray, amounts: np.ndarray, cost: CostModel
) -> Thresholds:
    """The review and decline thresholds of least total cost, the review band within its cap.

    Rows are ranked by score; declining the top ``d`` rows and reviewing the next ``r``
    costs ``false declines(d) + review_cost·r + missed fraud(d + r)``, all prefix sums.
    Cuts are only placed between distinct scores (a threshold cannot split a tie), and
    at most ``MAX_CANDIDATES`` of those are tried, spread evenly over the ranking.
    """
    cost.validate()
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ranked = np.asarray(scores, dtype=float)[order]
    fraud = np.asarray(labels)[order].astype(bool)
    amount = np.asarray(amounts, dtype=float)[order]
    n = len(ranked)
    if n == 0:
        raise ValueError("cannot choose thresholds on an empty validation window")
    fraud_amount = np.concatenate([[0.0], np.cumsum(np.where(fraud, amount, 0.0))])
    decline_loss = np.concatenate([[0.0], np.cumsum(np.where(fraud, 0.0, cost.false_decline_share * amount))])
    # Possible cut positions: 0 (nothing flagged) and the end of every group of tied scores.
    ends = np.flatnonzero(np.diff(ranked) != 0) + 1
    cuts = np.unique(np.concatenate([[0], ends, [n]]))
    if len(cuts) > MAX_CANDIDATES:
        cuts = np.unique(cuts[np.linspace(0, len(cuts) - 1, MAX_CANDIDATES).round().astype(int)])
    declined = cuts[:, None]  # rows ranked above the decline cut
    flagged = cuts[None, :]  # rows ranked above the review cut (declined + reviewed)
    reviewed = flagged - declined
    feasible = (reviewed >= 0) & (reviewed <= cost.review_cap * n)
    total = decline_loss[declined] + cost.review_cost * reviewed + (fraud_amount[n] - fraud_amount[flagged])
    total = np.where(feasible, total, np.inf)
    d, f = np.unravel_index(np.argmin(total), total.shape)

    def threshold_at(cut: int) -> float:  # the lowest score inside the top `cut` rows
        return float(ranked[cut - 1]) if cut > 0 else NEVER

    decline = threshold_at(int(cuts[d]))
    review = threshold_at(int(cuts[f])) if cuts[f] > cuts[d] else decline
    return Thresholds(review=review, decline=decline)
