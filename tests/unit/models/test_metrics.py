"""Metric functions against examples worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.metrics import (
    average_precision,
    card_precision_at_k,
    expected_calibration_error,
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
