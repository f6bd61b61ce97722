"""Metric functions against examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.metrics import (
    average_precision,
    bootstrap_draws,
    bootstrap_ranking_metrics,
    card_precision_at_k,
    expected_calibration_error,
    paired_bootstrap_difference,
    recall_at_fpr,
    roc_auc,
)


def test_card_precision_at_k_ranks_cards_by_their_max_score_each_day() -> None:
    day1, day2 = pd.Timestamp("2026-01-01"), pd.Timestamp("2026-01-02")
    # Day 1: A (max .9, one fraud txn), B (.8, legit), C (.7, fraud) → top 2 = A, B → 1/2.
    # Day 2: C (.95, fraud), D (.6, fraud), B (.3, legit) → top 2 = C, D → 2/2.
    rows = [
        ("A", day1, 0, 0.9),
        ("A", day1, 1, 0.1),
        ("B", day1, 0, 0.8),
        ("C", day1, 1, 0.7),
        ("C", day2, 1, 0.95),
        ("D", day2, 1, 0.6),
        ("B", day2, 0, 0.3),
    ]
    cards, days, labels, scores = (np.array(column) for column in zip(*rows, strict=True))
    assert card_precision_at_k(cards, days, labels, scores, k=2) == pytest.approx(0.75)


def test_card_precision_divides_by_k_on_a_day_with_fewer_cards() -> None:
    day = np.array([pd.Timestamp("2026-01-01")])
    assert card_precision_at_k(np.array(["A"]), day, np.array([1]), np.array([0.5]), k=4) == 0.25


def test_expected_calibration_error_by_hand() -> None:
    scores = np.array([0.05, 0.15, 0.15, 0.95])
    labels = np.array([0, 0, 1, 1])
    # bins: [0,.1): |.05-0|·1/4; [.1,.2): |.15-.5|·2/4; [.9,1]: |.95-1|·1/4
    assert expected_calibration_error(labels, scores) == pytest.approx(0.0125 + 0.175 + 0.0125)


def test_perfectly_calibrated_scores_have_zero_ece() -> None:
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    assert expected_calibration_error(np.array([0, 1, 0, 1]), scores) == 0.0


def test_recall_at_fpr_counts_only_what_fits_the_false_positive_budget() -> None:
    legit = np.arange(100) / 100  # 0.00 … 0.99
    fraud = np.array([0.995, 0.975, 0.5, 0.2])
    scores = np.concatenate([legit, fraud])
    labels = np.concatenate([np.zeros(100), np.ones(4)])
    assert recall_at_fpr(labels, scores, 0.01) == pytest.approx(0.25)  # flag ≥ .99: one legit
    assert recall_at_fpr(labels, scores, 0.02) == pytest.approx(0.50)  # flag ≥ .975: two legit
    assert recall_at_fpr(labels, scores, 0.0) == pytest.approx(0.25)  # flag > .99 only


def test_ranking_metrics_on_a_perfect_and_a_single_class_ranking() -> None:
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])
    assert roc_auc(labels, scores) == 1.0 and average_precision(labels, scores) == 1.0
    assert np.isnan(roc_auc(np.zeros(3), np.array([0.1, 0.2, 0.3])))


Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _scored_rows(seed: int, rows: int, fraud_rate: float) -> Rows:
    """Labels and three independent noises: scorers are built from them as signal + noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < fraud_rate).astype(int)
    return labels, *rng.normal(size=(3, rows))


@pytest.mark.parametrize("rows, fraud_rate", [(400, 0.05), (40, 0.05)])
def test_vectorised_ap_and_auc_equal_scikit_learn_on_every_resample(rows: int, fraud_rate: float) -> None:
    labels, e1, e2, _ = _scored_rows(3, rows, fraud_rate)
    scores = {
        "ties": np.round(labels + e1, 1),  # many tied scores, across classes
        "coarse": np.round(0.5 * labels + e2, 0),
        "continuous": labels + e1 + e2,
    }
    whole, resampled = bootstrap_ranking_metrics(labels, scores, n_resamples=60, seed=8)
    resamples = np.vstack(list(bootstrap_draws(rows, 60, 8)))
    for name, s in scores.items():
        assert whole[name]["average_precision"] == pytest.approx(average_precision(labels, s), abs=1e-12)
        assert whole[name]["roc_auc"] == pytest.approx(roc_auc(labels, s), abs=1e-12)
        expected_ap = [average_precision(labels[r], s[r]) for r in resamples]
        expected_auc = [roc_auc(labels[r], s[r]) for r in resamples]
        np.testing.assert_allclose(resampled[name]["average_precision"], expected_ap, atol=1e-12)
        np.testing.assert_allclose(resampled[name]["roc_auc"], expected_auc, atol=1e-12)
    if rows == 40:  # two fraud rows: some resamples draw none, where both metrics are undefined
        assert np.isnan(resampled["ties"]["average_precision"]).any()


def test_the_function_path_draws_the_same_resamples_as_the_vectorised_one() -> None:
    labels, e1, e2, _ = _scored_rows(4, 300, 0.05)
    a, b = labels + e1, 0.6 * labels + e2
    fast = paired_bootstrap_difference(labels, a, b, "average_precision", n_resamples=150, seed=2)
    general = paired_bootstrap_difference(labels, a, b, average_precision, n_resamples=150, seed=2)
    np.testing.assert_allclose(fast, general, atol=1e-12)
    assert fast.low < fast.diff < fast.high
    other_seed = paired_bootstrap_difference(labels, a, b, "average_precision", n_resamples=150, seed=3)
    assert other_seed.diff == fast.diff and other_seed.low != fast.low


def test_a_scorer_against_itself_differs_by_zero_and_swapping_mirrors_the_interval() -> None:
    labels, e1, e2, _ = _scored_rows(5, 1000, 0.03)
    a, b = labels + e1, labels + e2
    assert paired_bootstrap_difference(labels, a, a, "roc_auc", 200, 1) == (0.0, 0.0, 0.0)
    forward = paired_bootstrap_difference(labels, a, b, "average_precision", 300, 1)
    backward = paired_bootstrap_difference(labels, b, a, "average_precision", 300, 1)
    np.testing.assert_allclose(backward, (-forward.diff, -forward.high, -forward.low), atol=1e-12)


@pytest.mark.parametrize("metric", ["average_precision", "roc_auc"])
def test_the_interval_covers_no_difference_and_finds_a_small_real_one(metric: str) -> None:
    # 30 datasets. Two equally good scorers (independent noise): a 95% interval should hold
    # 0 about 95% of the time. A scorer and a degraded copy of it (extra noise): a small
    # difference that only pairing finds (measured: paired 80-90% of datasets, resampling
    # the two scorers independently 12-20%).
    covered = found = 0
    for seed in range(30):
        labels, e1, e2, e3 = _scored_rows(seed, 2000, 0.03)
        same_a, same_b = 1.5 * labels + e1, 1.5 * labels + e2
        null = paired_bootstrap_difference(labels, same_a, same_b, metric, 300, seed)
        covered += null.low <= 0 <= null.high
        real = paired_bootstrap_difference(labels, same_a, same_a + 0.8 * e3, metric, 300, seed)
        found += real.low > 0
    assert covered >= 26, f"{covered}/30 intervals held the true difference 0"
    assert found >= 20, f"{found}/30 intervals found the real difference"


def test_bootstrap_bad_input_is_a_clear_error() -> None:
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_difference(labels, labels, labels, "accuracy")
    with pytest.raises(ValueError, match="equal, non-empty lengths"):
        paired_bootstrap_difference(labels, labels[:3], labels)
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_difference(labels, labels, labels, confidence=95)
