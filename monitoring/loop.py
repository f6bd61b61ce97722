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
    running is skipped (the sample is a sample: bounded work beats a queue). A finished
    check is published at once, not at the next window: once traffic stops (the end of a
    replay) there is no next window.
    """
    from monitoring import skew

    pending: dict[str, Any] = {}
    latest: dict[str, Any] = {}

    def publish(evaluator: Evaluator, future: Any, at: str) -> None:
        """In the worker's result thread, when a check ends."""
        error = future.exception()
        if error is not None:
            log.error("skew check of the window ending %s failed: %s: %s", at, type(error).__name__, error)
            evaluator.hook_reports["skew"] = {"error": f"{type(error).__name__}: {error}", **latest}
            return
        report = future.result()
        skew.publish_skew(evaluator.metrics, report)
        content = report.to_dict()
        latest.update(
            at=at,
            checked=report.rows_checked,
            unexplained_features=report.unexplained_features,
            stale_rows=report.rows_stale,
            features=[{"feature": name, **values} for name, values in content["features"].items()],
        )
        evaluator.hook_reports["skew"] = dict(latest)

    def check(evaluator: Evaluator, end: pd.Timestamp) -> dict[str, Any] | None:
        if settings.skew_sample_rows <= 0:
            return None
        running = pending.get("future")
        if running is not None and running.done():
            pending.clear()
        if "future" not in pending:
            p = evaluator.state.predictions
            window = p[(p["event_time"] >= end - evaluator.window) & (p["event_time"] < end)]
            at = end.isoformat()
            future = evaluator.worker.submit(run_skew_check, settings, window)
            pending.update(future=future, at=at)
            future.add_done_callback(lambda done: publish(evaluator, done, at))
        return dict(latest) or None

    return check


def run_retrain(
    settings: Settings, now: pd.Timestamp, reason: str, train_days: float, gap_days: float
) -> Any:
    """In the monitor's worker process: `fraudctl train --retrain`, as the monitor."""
    from monitoring.retrain import retrain

    result = retrain(settings, now, reason, train_days=train_days, gap_days=gap_days, by="monitor")
    return result.as_dict()


class RetrainTrigger:
    """Retrain on a sustained alarm, or on a schedule: `fraudctl train --retrain` at `now`.

    The alarms: drift (the inputs or the scores moved) and missed fraud (matured labels found
    fraud the champion's scores did not expect: a new pattern that moves no input). Training
    ends one label delay (`retrain_gap_days`) before `now`, so a retraining started the moment
    an alarm is raised would learn nothing of the change: it is due once the training window
    holds `retrain_after_drift_days` of changed days. An alarm whose change began before the
    last retraining is that retraining's to answer. With `retrain_every_days`, also on that
    schedule. One at a time; the guard then finds the challenger it registered, shadows it
    and hands it to the canary.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.future: Any = None
        self.last_retrain_at: str | None = None  # event time of the latest retraining started
        self.schedule_from: str | None = None
        self.last: dict[str, Any] = {}

    def busy(self) -> bool:
        return self.future is not None and not self.future.done()

    def _alarms(self, evaluator: Evaluator) -> list[tuple[pd.Timestamp, pd.Timestamp, str]]:
        """(raised at, change since, reason) of each alarm on now."""
        alarms = []
        if evaluator.drift_alarm_at is not None:
            at = evaluator.drift_alarm_at
            since = min(
                (pd.Timestamp(a.since) for kind in evaluator.alarms.values() for a in kind.active.values()),
                default=at,
            )
            features = ", ".join(evaluator.drifted_features[:5])
            alarms.append((at, since, f"drift alarm since {since:%Y-%m-%d %H:%M}: {features}"))
        missed = evaluator.missed_fraud
        if missed.raised_at is not None and missed.since is not None:
            since, latest = pd.Timestamp(missed.since), missed.latest
            reason = (
                f"missed-fraud alarm since {since:%Y-%m-%d}: labels found {latest['found_fraud']:.0f} "
                f"frauds where the scores expected {latest['expected_fraud']:.0f}"
            )
            alarms.append((pd.Timestamp(missed.raised_at), since, reason))
        return alarms

    def _due(self, evaluator: Evaluator, end: pd.Timestamp) -> str | None:
        s = self.settings
        last = None if self.last_retrain_at is None else pd.Timestamp(self.last_retrain_at)
        wait = pd.Timedelta(days=s.retrain_gap_days + s.retrain_after_drift_days)
        for at, since, reason in self._alarms(evaluator):
            if (last is None or since > last) and end >= max(since + wait, at):
                return reason
        if s.retrain_every_days is not None:
            self.schedule_from = self.schedule_from or end.isoformat()  # from the first window seen
            base = last if last is not None else pd.Timestamp(self.schedule_from)
            if end - base >= pd.Timedelta(days=s.retrain_every_days):
                return f"schedule: every {s.retrain_every_days:g} days"
        return None

    def __call__(self, evaluator: Evaluator, end: pd.Timestamp) -> dict[str, Any] | None:
        s = self.settings
        if self.future is not None and self.future.done():
            try:
                result = self.future.result()
                self.last = {"at": self.last.get("at"), "passed": result.get("passed"), "result": result}
            except Exception as error:
                log.error("retraining failed: %s", error)
                self.last = {"at": self.last.get("at"), "error": f"{type(error).__name__}: {error}"}
            self.future = None
        reason = self._due(evaluator, end) if self.future is None else None
        if reason is not None:
            self.last_retrain_at = end.isoformat()
            self.last = {"at": end.isoformat(), "reason": reason}
            self.future = evaluator.worker.submit(
                run_retrain, s, end, reason, s.retrain_train_days, s.retrain_gap_days
            )
            log.warning("retraining at %s: %s", end, reason)
        return {**self.last, "running": self.busy()} if self.last else None

    def state_dict(self) -> dict[str, Any]:
        return {"last_retrain_at": self.last_retrain_at, "schedule_from": self.schedule_from}

    def restore(self, content: dict[str, Any]) -> None:
        self.last_retrain_at = content.get("last_retrain_at")
        self.schedule_from = content.get("schedule_from")


class GuardHook:
    """The canary guard and the rollback watch (`monitoring.rollback.Guard`), ticked each window."""

    def __init__(self, settings: Settings, config: Any = None) -> None:
        self.settings = settings
        self.config = config  # a canary.GuardConfig; None: its defaults
        self.guard: Any = None
        self._state: dict[str, Any] | None = None

    def __call__(self, evaluator: Evaluator, end: pd.Timestamp) -> dict[str, Any] | None:
        from monitoring.rollback import Guard

        if self.guard is None:
            self.guard = Guard.from_state(self.settings, self._state, self.config, metrics=evaluator.metrics)
        report: dict[str, Any] = self.guard.tick(
            evaluator.state.predictions, evaluator.state.labels, evaluator.now(end)
        )
        judged = report.get("canary") or report.get("watch") or {}
        # The page's shape (state, share, verdict, checks), with the guard's whole report beside.
        return {
            "state": report.get("phase"),
            "percent": report.get("canary_percent"),
            "verdict": judged.get("verdict"),
            "checks": judged.get("checks", []),
            "report": report,
        }

    def state_dict(self) -> dict[str, Any]:
        return self.guard.state_dict() if self.guard is not None else (self._state or {})

    def restore(self, content: dict[str, Any]) -> None:
        self._state = content or None


def default_hooks(settings: Settings, guard_config: Any = None) -> dict[str, Hook]:
    """Every part of the loop, in the order they run after a window."""
    return {
        "skew": skew_hook(settings),
        "retrain": RetrainTrigger(settings),
        "canary": GuardHook(settings, guard_config),
    }
