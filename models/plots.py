"""The four plots logged with every model run: PR curve, calibration curve, score histograms
by label, feature importance. Each returns a matplotlib Figure (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: training runs headless

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from models.metrics import calibration_curve  # noqa: E402


def pr_curve(labels: np.ndarray, curves: dict[str, np.ndarray]) -> Figure:
    """Precision-recall curves of one or more score columns on the same rows."""
    figure, axis = plt.subplots(figsize=(5, 4))
    for name, scores in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        axis.step(recall, precision, where="post", label=name)
    axis.axhline(float(np.mean(labels)), color="grey", linestyle=":", label="base rate")
    axis.set(xlabel="recall", ylabel="precision", title="precision-recall (test window)", ylim=(0, 1.02))
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def reliability(labels: np.ndarray, scores: np.ndarray) -> Figure:
    curve = calibration_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.plot(curve["mean_score"], curve["fraud_rate"], marker="o")
    axis.set(xlabel="mean calibrated score", ylabel="observed fraud rate", title="calibration (test window)")
    figure.tight_layout()
    return figure


def score_histograms(labels: np.ndarray, scores: np.ndarray) -> Figure:
    figure, axis = plt.subplots(figsize=(5, 4))
    bins = np.linspace(0, 1, 41).tolist()
    for value, name in ((0, "legitimate"), (1, "fraud")):
        axis.hist(scores[labels == value], bins=bins, alpha=0.6, density=True, label=name)
    axis.set(xlabel="calibrated score", ylabel="density", yscale="log", title="scores by label (test window)")
    axis.legend()
    figure.tight_layout()
    return figure


def feature_importance(names: list[str], importance: np.ndarray, top: int = 20) -> Figure:
    order = np.argsort(importance)[-top:]
    figure, axis = plt.subplots(figsize=(6, 0.25 * len(order) + 1))
    axis.barh([names[i] for i in order], importance[order])
    axis.set(xlabel="drop in validation AP when shuffled", title="permutation importance")
    figure.tight_layout()
    return figure


def close(figure: Figure) -> None:
    plt.close(figure)
