"""Every number a reviewer asks for, on one scored window: overall, per fraud scenario, per channel.

`evaluate` takes the test rows (with `transaction_id, event_time, card_id, channel,
amount, scenario, label`), a model's calibrated scores and its thresholds, and returns
flat metric names (what MLflow logs) plus the breakdowns (what the model card shows).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from core.events import LEGIT_SCENARIO
from models.costs import APPROVE, DECLINE, REVIEW, CostModel, Thresholds, decide, decision_costs
from models.metrics import (
    RANKING_METRICS,
    average_precision,
    bootstrap_ranking_metrics,
    card_precision_at_k,
    expected_calibration_error,
    percentile_interval,
    recall_at_fpr,
    roc_auc,
)

HEADLINE = ["roc_auc", "average_precision", "recall_at_1pct_fpr", "card_precision_at_100", "ece", "cost"]
# The prefix of a difference's metric names: ap_diff_vs_rules, ap_diff_vs_rules_ci_low, ...
DIFF_PREFIX = {"average_precision": "ap", "roc_auc": "roc_auc"}


def ranking_metrics(frame: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    labels = frame["label"].to_numpy()
    return {
        "roc_auc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        "recall_at_1pct_fpr": recall_at_fpr(labels, scores, 0.01),
        "fraud_rate": float(labels.mean()) if len(labels) else float("nan"),
        "rows": float(len(labels)),
    }


def decision_metrics(
    frame: pd.DataFrame, scores: np.ndarray, thresholds: Thresholds, cost: CostModel
) -> dict[str, float]:
    labels, amounts = frame["label"].to_numpy(), frame["amount"].to_numpy()
    decisions = decide(scores, thresholds)
    fraud = labels.astype(bool)
    caught = (decisions != APPROVE) & fraud
    return {
        "cost": float(decision_costs(decisions, labels, amounts, cost).sum()),
        "cost_approve_all": float(amounts[fraud].sum()),
        "review_share": float(np.mean(decisions == REVIEW)) if len(decisions) else 0.0,
        "decline_share": float(np.mean(decisions == DECLINE)) if len(decisions) else 0.0,
        "fraud_caught_share": float(caught.sum() / fraud.sum()) if fraud.any() else float("nan"),
        "fraud_amount_caught_share": float(amounts[caught].sum() / amounts[fraud].sum())
        if fraud.any()
        else float("nan"),
    }


def evaluate(
    frame: pd.DataFrame,
    scores: np.ndarray,
    thresholds: Thresholds,
    cost: CostModel,
    rules_cost: float | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, dict[str, float]]]]:
    """Headline metrics and breakdowns of one model on one window.

    Returns:
        ``(metrics, breakdowns)``: ``metrics`` maps flat names to numbers (savings against
        approve-all and, when ``rules_cost`` is given, against the rules); ``breakdowns``
        maps ``"scenario"`` and ``"channel"`` to per-value metric dicts.
    """
    scores = np.asarray(scores, dtype=float)
    labels = frame["label"].to_numpy()
    days = frame["event_time"].dt.floor("D").to_numpy()
    metrics = {
        **ranking_metrics(frame, scores),
        "card_precision_at_100": card_precision_at_k(frame["card_id"].to_numpy(), days, labels, scores, 100),
        "ece": expected_calibration_error(labels, scores),
        **decision_metrics(frame, scores, thresholds, cost),
    }
    metrics["savings_vs_approve_all"] = metrics["cost_approve_all"] - metrics["cost"]
    if rules_cost is not None:
        metrics["savings_vs_rules"] = rules_cost - metrics["cost"]

    breakdowns: dict[str, dict[str, dict[str, float]]] = {"scenario": {}, "channel": {}}
    legit = frame["scenario"].to_numpy() == LEGIT_SCENARIO
    for scenario in sorted(set(frame["scenario"]) - {LEGIT_SCENARIO}):
        # This scenario's fraud against all legitimate traffic: how well is *it* found?
        rows = legit | (frame["scenario"].to_numpy() == scenario)
        part, part_scores = frame[rows], scores[rows]
        found = decide(part_scores, thresholds) != APPROVE
        in_scenario = part["scenario"].to_numpy() == scenario
        breakdowns["scenario"][scenario] = {
            **ranking_metrics(part, part_scores),
            "transactions": float(in_scenario.sum()),
            "caught_share": float(found[in_scenario].mean()),
        }
    for channel in sorted(set(frame["channel"])):
        rows = frame["channel"].to_numpy() == channel
        part, part_scores = frame[rows], scores[rows]
        breakdowns["channel"][channel] = {
            **ranking_metrics(part, part_scores),
            **decision_metrics(part, part_scores, thresholds, cost),
        }
    return metrics, breakdowns


def diff_key(metric: str, baseline: str) -> str:
    """The metric name of metric(model) − metric(baseline); ``_ci_low``/``_ci_high`` follow it."""
    return f"{DIFF_PREFIX[metric]}_diff_vs_{baseline}"


def baseline_differences(
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    models: tuple[str, ...],
    baselines: tuple[str, ...],
    n_resamples: int = 1_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Each model against each baseline on the same test rows: AP and ROC-AUC differences
    with paired bootstrap percentile intervals (`models.metrics.paired_bootstrap_difference`).

    One resampling pass serves every pair: all scorers are measured on the same resamples.
    Returns ``{model: {"ap_diff_vs_rules": d, "ap_diff_vs_rules_ci_low": lo, ..._ci_high: hi, ...}}``.
    A model beats a baseline on a metric only where ``_ci_low`` is above 0.
    """
    whole, resampled = bootstrap_ranking_metrics(labels, scores, n_resamples, seed)
    differences: dict[str, dict[str, float]] = {}
    for model in models:
        values = differences.setdefault(model, {})
        for baseline in baselines:
            for metric in RANKING_METRICS:
                diff, low, high = percentile_interval(
                    whole[model][metric] - whole[baseline][metric],
                    resampled[model][metric] - resampled[baseline][metric],
                    confidence,
                )
                key = diff_key(metric, baseline)
                values |= {key: diff, f"{key}_ci_low": low, f"{key}_ci_high": high}
    return differences


def flat_breakdowns(breakdowns: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``scenario.card_testing.roc_auc``-style names, for MLflow."""
    return {
        f"{kind}.{value}.{name}": number
        for kind, values in breakdowns.items()
        for value, metrics in values.items()
        for name, number in metrics.items()
        if np.isfinite(number)
    }


def metrics_table(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per model: the headline numbers and the savings, for the CLI, README and card."""
    rows = []
    for name, m in results.items():
        rows.append(
            {
                "model": name,
                **{key: m.get(key, float("nan")) for key in HEADLINE},
                "savings_vs_approve_all": m.get("savings_vs_approve_all", float("nan")),
                "savings_vs_rules": m.get("savings_vs_rules", float("nan")),
                "review_share": m.get("review_share", float("nan")),
                "decline_share": m.get("decline_share", float("nan")),
            }
        )
    return rows
