"""The two baselines every model must beat: the rules a fraud team writes first, and a
logistic regression on the same features.

Both produce a raw score in [0, 1] that is calibrated and turned into decisions exactly
like the models' scores, so the comparison is of the scores alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.features import MODEL_FEATURES

# (rule, points): the kind of list a fraud team starts from. Each reads only model features.
RULES: list[tuple[str, int]] = [
    ("amount far above the card's habit (z-score > 3)", 2),
    ("new device on an online purchase", 1),
    ("merchant abroad (for this card)", 1),
    ("IP address abroad", 1),
    ("5+ transactions on the card in the last hour", 2),
    ("device used by 3+ cards today", 2),
    ("merchant fraud rate above 1% (28 days, lagged)", 1),
    ("card never seen, online purchase over 200", 1),
]
MAX_POINTS = sum(points for _, points in RULES)


def rule_flags(f: Any) -> list[Any]:
    """Each rule's verdict, in ``RULES`` order, on model features.

    ``f`` maps feature names to columns (a DataFrame: one verdict per row) or to floats
    (one transaction in the scoring service): the same expressions serve both.
    """
    online = f["channel_is_ecommerce"] > 0
    return [
        f["card_amount_zscore_30d"] > 3,
        online & (f["has_device"] > 0) & (f["card_device_is_new_30d"] > 0),
        f["merchant_is_foreign"] > 0,
        f["ip_is_foreign"] > 0,
        f["card_txn_count_1h"] >= 5,
        f["device_distinct_cards_24h"] >= 3,
        f["merchant_fraud_rate_28d_lag7d"] > 0.01,
        online & (f["card_has_history"] == 0) & (np.expm1(f["amount_log"]) > 200),
    ]


def rule_hits(features: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per rule (the rule text as name), one row per transaction."""
    hits = rule_flags(features)
    return pd.DataFrame({name: hit.to_numpy() for (name, _), hit in zip(RULES, hits, strict=True)})


def rules_score(features: pd.DataFrame) -> np.ndarray:
    """Points of the rules that fire, over the maximum: a raw score in [0, 1]."""
    points = np.array([p for _, p in RULES], dtype=float)
    return np.asarray(rule_hits(features).to_numpy(dtype=float) @ points / MAX_POINTS)


def signed_log(x: np.ndarray) -> np.ndarray:
    """sign(x)·log(1 + |x|): tames counts, amounts and seconds that span orders of magnitude."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class LogisticBaseline:
    """Standardised signed-log features → class-weighted logistic regression."""

    seed: int = 0

    def fit(self, features: pd.DataFrame, labels: np.ndarray) -> LogisticBaseline:
        from sklearn.linear_model import LogisticRegression

        x = signed_log(features[MODEL_FEATURES].to_numpy(dtype=np.float64))
        self.mean_, self.std_ = x.mean(axis=0), x.std(axis=0) + 1e-9
        self.model_ = LogisticRegression(
            C=0.1, max_iter=2000, class_weight="balanced", random_state=self.seed
        )
        self.model_.fit((x - self.mean_) / self.std_, labels)
        return self

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        x = signed_log(features[MODEL_FEATURES].to_numpy(dtype=np.float64))
        return np.asarray(self.model_.predict_proba((x - self.mean_) / self.std_)[:, 1])
