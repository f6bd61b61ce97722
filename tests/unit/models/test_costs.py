"""The cost model and the choice of decision thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from models.costs import NEVER, CostModel, Thresholds, choose_thresholds, decide, decision_costs, total_cost


def test_each_outcome_costs_what_the_model_says() -> None:
    cost = CostModel(review_cost=5.0, false_decline_share=0.1, review_cap=1.0)
    decisions = np.array(["approve", "approve", "review", "review", "decline", "decline"])
    labels = np.array([1, 0, 1, 0, 1, 0])
    amounts = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 50.0])
    # missed fraud 100, nothing, review 5, review 5, caught fraud 0, false decline 10% of 50
    assert decision_costs(decisions, labels, amounts, cost).tolist() == [100.0, 0.0, 5.0, 5.0, 0.0, 5.0]


def test_decide_uses_both_thresholds_inclusively() -> None:
    thresholds = Thresholds(review=0.3, decline=0.8)
    assert decide(np.array([0.1, 0.3, 0.79, 0.8, 1.0]), thresholds).tolist() == [
        "approve",
        "review",
        "review",
        "decline",
        "decline",
    ]


# Ranked: .9 fraud 1000, .7 legit 500, .5 fraud 20, .1 legit 10; a review costs 5,
# a false decline 10% of the amount.
SCORES = np.array([0.9, 0.7, 0.5, 0.1])
LABELS = np.array([1, 0, 1, 0])
AMOUNTS = np.array([1000.0, 500.0, 20.0, 10.0])


def test_thresholds_are_the_cheapest_bands_by_hand() -> None:
    # With two reviews allowed: decline the .9, review the .7 and the .5 (5 + 5) = 10,
    # cheaper than approving the .5 fraud (20) or declining the .7 (50).
    cost = CostModel(review_cost=5.0, false_decline_share=0.1, review_cap=0.5)
    thresholds = choose_thresholds(SCORES, LABELS, AMOUNTS, cost)
    assert thresholds == Thresholds(review=0.5, decline=0.9)
    assert total_cost(SCORES, LABELS, AMOUNTS, thresholds, cost) == 10.0


def test_a_tighter_review_cap_changes_the_bands() -> None:
    # One review allowed: reviewing the .7 alone does not reach the .5 fraud (25);
    # declining the .9 and approving the rest costs the missed 20.
    cost = CostModel(review_cost=5.0, false_decline_share=0.1, review_cap=0.25)
    thresholds = choose_thresholds(SCORES, LABELS, AMOUNTS, cost)
    assert thresholds == Thresholds(review=0.9, decline=0.9)
    assert total_cost(SCORES, LABELS, AMOUNTS, thresholds, cost) == 20.0


def test_nothing_flagged_when_no_fraud_is_worth_acting_on() -> None:
    thresholds = choose_thresholds(
        np.array([0.2, 0.1]), np.array([0, 0]), np.array([10.0, 10.0]), CostModel()
    )
    assert thresholds == Thresholds(review=NEVER, decline=NEVER)


@pytest.mark.parametrize("cap", [0.0, 0.01, 0.05, 0.2])
def test_review_band_respects_the_cap(cap: float) -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    labels = (rng.random(n) < 0.03).astype(int)
    scores = np.clip(0.5 * labels + rng.normal(0.2, 0.2, n), 0, 1)
    amounts = rng.lognormal(4, 1, n)
    # Reviews are cheap here, so the optimum would review far more than any cap allows.
    cost = CostModel(review_cost=0.5, false_decline_share=0.5, review_cap=cap)
    thresholds = choose_thresholds(scores, labels, amounts, cost)
    review_share = np.mean(decide(scores, thresholds) == "review")
    assert review_share <= cap + 1e-12
    assert thresholds.review <= thresholds.decline


def test_bad_cost_model_is_refused() -> None:
    with pytest.raises(ValueError, match="review cap"):
        choose_thresholds(np.array([0.5]), np.array([1]), np.array([1.0]), CostModel(review_cap=1.5))
