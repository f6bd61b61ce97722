"""Drift detection delay and false alarms, from the drills (DESIGN.md section 7).

`drift_detection_hours_<kind>`: event-time hours from the drift's start to the monitor's
first sustained alarm, per drift kind (null: not detected within the drill's days), and
`drift_detected_by_<kind>`: which alarm ("drift" on the inputs and scores, "missed_fraud"
on the matured labels); `drift_false_alarms`: alarms of either kind raised by the no-drift
control over the same span (target 0).
Each drill builds its own world and runs every part (8-13 min each on this machine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from core.settings import Settings

KINDS = ("amount-shift", "new-merchant-mix", "new-fraud-pattern")


def run_benchmark() -> dict[str, Any]:
    from monitoring.drill import DrillWorld, run_drift

    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(var_dir=Path(tmp) / "var")
        for kind in KINDS:
            report = run_drift(kind, settings, DrillWorld(), lambda _line: None)
            name = kind.replace("-", "_")
            metrics[f"drift_detection_hours_{name}"] = report.detection_hours
            metrics[f"drift_detected_by_{name}"] = report.detected_by
        control = run_drift("none", settings, DrillWorld(), lambda _line: None)
        alarms = ("drift_alarm", "performance_alarm")
        metrics["drift_false_alarms"] = sum(1 for a in control.actions if a["action"] in alarms)
    return metrics
