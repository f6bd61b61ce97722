"""The features behind a score, in words a reviewer understands.

Serving has only the ONNX graph (no SHAP, no training code), so the attribution is by
occlusion: each feature in turn is set to its typical value (the median of the version's
drift reference sample) and the row re-scored; the features whose typical value lowers
the score most are the reasons. All variants go through ONNX Runtime in one batch.
"""

from __future__ import annotations

import numpy as np

from core.features import MODEL_FEATURES

TOP_REASONS = 3
MIN_CONTRIBUTION = 0.005  # a feature that moves the score by less is not a reason

DESCRIPTIONS = {
    "amount_log": "amount (log)",
    "hour_of_day": "hour of day (UTC)",
    "is_weekend": "weekend purchase",
    "channel_is_ecommerce": "online purchase",
    "has_device": "device fingerprint present",
    "merchant_is_foreign": "merchant outside the card's home country",
    "ip_is_foreign": "IP address outside the card's home country",
    "card_has_history": "card seen before",
    "card_seconds_since_prev_txn": "seconds since the card's previous purchase",
    "card_amount_zscore_30d": "amount vs the card's 30-day habit (z-score)",
    "card_amount_mean_30d": "card's mean amount over 30 days",
    "card_amount_std_30d": "spread of the card's amounts over 30 days",
    "card_txn_count_30d": "card's purchases in 30 days",
    "card_distinct_merchants_24h": "distinct merchants on the card in 24 h",
    "card_distinct_countries_24h": "distinct countries on the card in 24 h",
    "card_distinct_devices_24h": "distinct devices on the card in 24 h",
    "card_device_is_new_30d": "device new to the card",
    "card_country_is_new_30d": "country new to the card",
    "merchant_txn_count_24h": "merchant's purchases in 24 h",
    "merchant_txn_count_7d": "merchant's purchases in 7 days",
    "merchant_txn_count_28d_lag7d": "merchant's purchases in the 28 days to a week ago",
    "merchant_fraud_rate_28d_lag7d": "merchant's fraud rate (28 days to a week ago)",
    "device_txn_count_24h": "purchases on the device in 24 h",
    "device_distinct_cards_24h": "distinct cards on the device in 24 h",
}
_WINDOWS = {"10m": "10 min", "1h": "1 h", "24h": "24 h", "7d": "7 days"}
for _window, _words in _WINDOWS.items():
    DESCRIPTIONS[f"card_txn_count_{_window}"] = f"card's purchases in {_words}"
    DESCRIPTIONS[f"card_amount_sum_{_window}"] = f"card's spend in {_words}"
    DESCRIPTIONS[f"card_amount_max_{_window}"] = f"card's largest purchase in {_words}"
assert set(DESCRIPTIONS) == set(MODEL_FEATURES), set(MODEL_FEATURES) ^ set(DESCRIPTIONS)


def _shown(name: str, value: float) -> str:
    if name == "amount_log":
        return f"amount {np.expm1(value):,.2f}"
    if value in (0.0, 1.0) and ("_is_" in name or name.startswith(("is_", "has_"))):
        return DESCRIPTIONS[name] + ("" if value else ": no")
    return f"{DESCRIPTIONS[name]}: {value:,.4g}"


def occlusion_rows(vector: np.ndarray, typical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows to score: the vector, then one copy per differing feature set to typical."""
    differing = np.flatnonzero(vector != typical)
    rows = np.repeat(vector[None, :], len(differing) + 1, axis=0)
    rows[np.arange(1, len(differing) + 1), differing] = typical[differing]
    return rows, differing


def explain(vector: np.ndarray, typical: np.ndarray, scores: np.ndarray, differing: np.ndarray) -> list[str]:
    """Reasons from the scores of `occlusion_rows` (first: the vector itself)."""
    contributions = scores[0] - scores[1:]
    order = np.argsort(-contributions)[:TOP_REASONS]
    reasons = []
    for i in order:
        if contributions[i] < MIN_CONTRIBUTION:
            break
        name = MODEL_FEATURES[differing[i]]
        typical_value = float(typical[differing[i]])
        if name == "amount_log":
            typical_value = float(np.expm1(typical_value))
        reasons.append(
            f"{_shown(name, float(vector[differing[i]]))} (typical {typical_value:,.4g}; "
            f"score +{contributions[i]:.2f})"
        )
    return reasons
