"""The closed loop's parts, wired into the monitor's evaluator as hooks, one per part.

Each hook runs after a window is evaluated, with the evaluator (its state, champion, drift
alarm, performance) and the window's end (event time). It returns what the page and
`--json` show under its name, and acts, if at all, through the verbs a person has.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from core.settings import Settings
from monitoring.evaluator import Evaluator, Hook

log = logging.getLogger(__name__)


def run_skew_check(settings: Settings, window: pd.DataFrame) -> Any:
    """In the monitor's worker process: the skew report of a sample of one window's rows."""
    from monitoring import skew

    # The log carries the request's fields since they were added; with older rows the
    # features that need them are listed as unchecked.
    complete = bool(window["channel"].notna().all())
    return skew.check_skew(
        settings, window, sample=settings.skew_sample_rows, transactions=window if complete else None
    )


def skew_hook(settings: Settings) -> Hook:
    """Re-join a sample of each window's served rows offline (Feast PIT) and compare vectors.

    The check runs in the worker process; a window whose predecessor's check is still
    running is skipped (the sample is a sample: bounded work beats a queue).
    """
    from monitoring import skew

    pending: dict[str, Any] = {}
    latest: dict[str, Any] = {}

    def check(evaluator: Evaluator, end: pd.Timestamp) -> dict[str, Any] | None:
        if settings.skew_sample_rows <= 0:
            return None
        running = pending.get("future")
        if running is not None and running.done():
            report, at = running.result(), pending.pop("at")
            pending.pop("future")
            skew.publish_skew(evaluator.metrics, report)
            content = report.to_dict()
            latest.update(
                at=at,
                checked=report.rows_checked,
                unexplained_features=report.unexplained_features,
                stale_rows=report.rows_stale,
                features=[{"feature": name, **values} for name, values in content["features"].items()],
            )
        if "future" not in pending:
            p = evaluator.state.predictions
            window = p[(p["event_time"] >= end - evaluator.window) & (p["event_time"] < end)]
            pending.update(
                future=evaluator.worker.submit(run_skew_check, settings, window), at=end.isoformat()
            )
        return dict(latest) or None

    return check


def default_hooks(settings: Settings) -> dict[str, Hook]:
    return {"skew": skew_hook(settings)}
