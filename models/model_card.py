"""The model card stored with each registered version (markdown): what a reviewer reads first."""

from __future__ import annotations

import math
from typing import Any

from models.evaluation import metrics_table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value.is_integer() and abs(value) >= 1:  # counts
            return f"{value:,.0f}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of dict rows (same keys in each)."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def render(metadata: dict[str, Any], comparison: dict[str, dict[str, float]]) -> str:
    """The card of one model, from its stored metadata and the test metrics of every candidate."""
    w, cost, thr = metadata["windows"], metadata["cost_model"], metadata["thresholds"]
    scenarios = [
        {
            "scenario": name,
            **{k: m[k] for k in ("transactions", "roc_auc", "recall_at_1pct_fpr", "caught_share")},
        }
        for name, m in metadata["breakdowns"]["scenario"].items()
    ]
    channels = [
        {"channel": name, **{k: m[k] for k in ("rows", "roc_auc", "average_precision", "cost")}}
        for name, m in metadata["breakdowns"]["channel"].items()
    ]
    return f"""# fraud-detector: {metadata["model_type"]}

Scores card transactions with a calibrated fraud probability and turns it into
approve / review / decline. Trained by `fraudctl train` (seed {metadata["seed"]}).

## Data
- dataset `{metadata["data"]["dir"]}`, fingerprint `{metadata["data"]["fingerprint"][:16]}`
- training {w["train_start"]} → {w["train_end"]} (validation from {w["valid_start"]}),
  labels as reported by {w["label_cutoff"]}
- test {w["test_start"]} → {w["test_end"]}, against every label the dataset holds
- rows: train {metadata["rows"]["train"]:,} ({metadata["rows"]["train_fraud"]:,} fraud known),
  validation {metadata["rows"]["valid"]:,} ({metadata["rows"]["valid_fraud"]:,}),
  test {metadata["rows"]["test"]:,} ({metadata["rows"]["test_fraud"]:,})
- {len(metadata["features"])} features, in order: `{", ".join(metadata["features"])}`

## Decisions
- calibration: {metadata["calibration"]["method"]}, fitted on the validation window
- score ≥ {thr["decline"]:.4f} → decline; ≥ {thr["review"]:.4f} → review; else approve
- cost model: a review costs {cost["review_cost"]:g}, a false decline {cost["false_decline_share"]:.0%}
  of the amount, missed fraud its amount; review band capped at {cost["review_cap"]:.1%} of traffic

## Test metrics, beside the other candidates and the baselines
{table(metrics_table(comparison))}

### By fraud scenario (that scenario's fraud against all legitimate traffic)
{table(scenarios)}

### By channel
{table(channels)}

## Limitations
- Trained and tested on simulated data; real fraud mixes and label delays differ.
- Labels arrive days to weeks late: training rows near the end of the window carry few
  of their eventual chargebacks, so the model learns mostly from older fraud, and the
  calibration (fitted on the most recent, least-labelled window) tends to under-state risk.
- Fraud that is never reported counts as legitimate, in training and in test.
- A scenario absent from training (or new after it) is scored only through the generic
  signals; watch the per-scenario table and the drift monitor.
"""
