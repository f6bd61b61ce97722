"""Calibration: raw model scores → probabilities, stored as numbers and applied with numpy.

Fitted on the validation window (the model never trained on it), stored with the model
version as a small dict, and applied by `apply` — the one function training and serving
both call, with nothing but numpy, so serving needs neither scikit-learn nor the model.

* ``platt`` (default): a logistic regression on the logit of the raw score. Class
  weighting shifts a model's log-odds by a constant; Platt scaling undoes exactly that,
  and being strictly increasing it keeps the ranking (ROC-AUC and AP are unchanged).
* ``isotonic``: a non-decreasing step function (x/y knots, linear between knots, clipped
  at the ends, like scikit-learn's ``IsotonicRegression.predict``). More flexible, but
  its flat steps tie scores together, which costs ranking resolution on small windows.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

Method = Literal["platt", "isotonic"]
EPSILON = 1e-7  # keeps logit finite for raw scores of exactly 0 or 1


def _logit(raw: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(raw, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


def fit(raw: np.ndarray, labels: np.ndarray, method: Method = "platt") -> dict[str, Any]:
    """Fit a calibration of ``raw`` scores to 0/1 ``labels``; returns its stored form."""
    labels = np.asarray(labels).astype(int)
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise ValueError("calibration needs both fraud and legitimate rows in the validation window")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # Unregularised (C large): two parameters, thousands of rows.
        model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(raw)[:, None], labels)
        return {"method": "platt", "slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])}
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, labels)
        return {
            "method": "isotonic",
            "x": iso.X_thresholds_.astype(float).tolist(),
            "y": iso.y_thresholds_.astype(float).tolist(),
        }
    raise ValueError(f"unknown calibration method {method!r}; choose platt or isotonic")


def apply(calibration: dict[str, Any], raw: np.ndarray) -> np.ndarray:
    """Calibrated probabilities for raw scores (float64)."""
    if calibration["method"] == "platt":
        z = calibration["slope"] * _logit(raw) + calibration["intercept"]
        return 1.0 / (1.0 + np.exp(-z))
    if calibration["method"] == "isotonic":
        return np.interp(np.asarray(raw, dtype=np.float64), calibration["x"], calibration["y"])
    raise ValueError(f"unknown calibration method {calibration['method']!r}")
