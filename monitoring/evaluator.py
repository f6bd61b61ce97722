"""What the monitor does each time event time closes a window: drift, performance, the loop.

The consumer (`monitoring/monitor.py`) feeds `MonitorState` and calls `Evaluator.advance`
with the watermark: the event time every partition of `predictions` has reached. Each
tumbling window of `drift_window_hours` that ends at or before it is evaluated once, in
order, on the rows the state holds. Everything runs on event time, never the wall clock,
so a replay at a speed-up is judged as the real days would be, and a restarted monitor
(which resumes from its checkpoint) evaluates the same windows on the same rows.

Per window:

1. **Drift** of the champion's rows (model-scored, not degraded) against the champion
   version's reference sample: the window itself, and the last `drift_window_decisions`
   decisions. Each kind has its own sustained alarm (`DriftAlarm`); seasonal features are
   measured and exported but cannot raise it (see `SEASONAL_FEATURES`). A raised alarm is
   audited, its Evidently report saved under `var/reports/` and logged to MLflow.
2. **Performance**: the label-free estimate (CBPE) of every day, and the matured cohorts
   once a day is `maturity_days` old.
3. **The loop**, through the hooks the monitor is built with: skew, canary guard, rollback,
   retraining. Each acts only through the verbs a person has (DESIGN.md §6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from core.settings import Settings
from models.costs import CostModel
from monitoring import audit, drift, page, performance
from monitoring.metrics import MonitorMetrics
from monitoring.state import MonitorState

log = logging.getLogger(__name__)

# Measured and exported, never alarmed on:
# * seasonal features, whose distribution in a window depends on which hours or days it
#   covers, not on the world: a window of one Saturday has is_weekend = 1 on every row (a
#   24 h window covers the hours evenly; none short of a week covers the weekdays);
# * merchant and device aggregates: one value per entity and day, so a window's distribution
#   is the mix of which merchants happened to trade, dominated by a few large ones. Measured
#   on the drill's clean days (100 merchants): PSI 0.4-3.6 every day. Their shifts are real
#   per merchant, not a population drift of the model's inputs.
SEASONAL_FEATURES = ("hour_of_day", "is_weekend")
ENTITY_AGGREGATES = tuple(
    c for c in drift.DRIFT_COLUMNS if c.startswith(("merchant_txn", "merchant_fraud", "device_"))
)
NOT_ALARMED = (*SEASONAL_FEATURES, *ENTITY_AGGREGATES)
ALARM_COLUMNS = [c for c in drift.DRIFT_COLUMNS if c not in NOT_ALARMED]
WINDOW_KINDS = ("hours", "decisions")
PSI_HISTORY = 48  # windows of PSI kept per column for the page's sparklines
MODEL_SCORED = ("champion",)  # rows whose score the champion's reference describes


@dataclass
class ChampionInfo:
    """What the evaluator needs of the serving champion: read from the registry on change."""

    version: str
    model_type: str
    reference: pd.DataFrame
    thresholds: dict[str, float]
    cost: CostModel


def load_champion(settings: Settings) -> ChampionInfo | None:
    from models import registry

    try:
        loaded = registry.load_version(settings, registry.CHAMPION)
    except registry.RegistryError:
        return None
    reference = drift.read_reference(loaded.folder / "extra_files" / registry.REFERENCE_SAMPLE_FILE)
    metadata = loaded.metadata
    cost = CostModel(**metadata.get("cost_model", {}))
    return ChampionInfo(
        loaded.version, str(metadata.get("model_type", "?")), reference, dict(metadata["thresholds"]), cost
    )


Hook = Callable[["Evaluator", pd.Timestamp], dict[str, Any] | None]


@dataclass
class WindowResult:
    end: pd.Timestamp
    kind: str
    rows: int
    results: list[drift.ColumnDrift]
    raised: list[str]
    active: list[str]


@dataclass
class Evaluator:
    settings: Settings
    state: MonitorState
    metrics: MonitorMetrics
    hooks: dict[str, Hook] = field(default_factory=dict)  # name -> called after each window
    champion: ChampionInfo | None = None
    last_window_end: pd.Timestamp | None = None
    alarms: dict[str, drift.DriftAlarm] = field(default_factory=dict)
    psi_history: dict[str, list[float]] = field(default_factory=dict)
    latest: dict[str, WindowResult] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)
    hook_reports: dict[str, Any] = field(default_factory=dict)
    drift_alarm_at: pd.Timestamp | None = None  # event time of the first alarm raised
    drifted_features: list[str] = field(default_factory=list)
    windows_evaluated: int = 0
    expected: pd.DataFrame | None = None
    realised: pd.DataFrame | None = None
    missed_fraud: performance.MissedFraudAlarm = field(default_factory=performance.MissedFraudAlarm)
    _matured_through: pd.Timestamp | None = None
    worker: Worker = field(default_factory=lambda: Worker())

    def __post_init__(self) -> None:
        for kind in WINDOW_KINDS:
            self.alarms.setdefault(kind, drift.DriftAlarm(self.settings.drift_windows_required))
        self.missed_fraud.days_required = self.settings.drift_windows_required

    # --- time -----------------------------------------------------------------------------
    @property
    def window(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.settings.drift_window_hours)

    def _first_end(self, earliest: pd.Timestamp) -> pd.Timestamp:
        """The end of the first whole window after the first event seen (windows are aligned)."""
        width = self.window.value // 1000  # µs
        start_us = earliest.value // 1000
        return pd.Timestamp((start_us // width + 2) * width * 1000, tz="UTC")

    def now(self, watermark: pd.Timestamp) -> pd.Timestamp:
        """The labels' clock: the latest event time or report time consumed."""
        labels = self.state.labels
        latest_label = pd.Timestamp(labels["reported_at"].max()) if len(labels) else watermark
        return max(watermark, latest_label)

    def _next_end(self, earliest: pd.Timestamp) -> pd.Timestamp:
        if self.last_window_end is None:
            return self._first_end(earliest)
        return self.last_window_end + self.window

    def pending(self, watermark: pd.Timestamp | None, earliest: pd.Timestamp | None) -> bool:
        """Whether a window ending at or before `watermark` is still to be evaluated."""
        if watermark is None or earliest is None:
            return False
        return self._next_end(earliest) <= watermark

    def advance(
        self, watermark: pd.Timestamp | None, earliest: pd.Timestamp | None, max_windows: int | None = None
    ) -> int:
        """Evaluate the windows that end at or before `watermark`, in order (up to `max_windows`);
        `earliest` is the first event time consumed (where the first window starts).

        The consumer asks for one at a time, so that it polls between windows (a consumer
        that does not poll for `max_poll_interval_ms` is dropped from its group). Returns
        how many were evaluated.
        """
        if watermark is None or earliest is None:
            return 0
        end = self._next_end(earliest)  # checked before reading the frame: this runs every poll
        evaluated = 0
        while end <= watermark and (max_windows is None or evaluated < max_windows):
            self._evaluate(end)
            self.last_window_end = end
            end = end + self.window
            evaluated += 1
        return evaluated

    # --- one window -------------------------------------------------------------------------
    def _refresh_champion(self) -> None:
        from models import registry

        current = registry.current_version(registry.connect(self.settings), registry.CHAMPION)
        if current is not None and (self.champion is None or self.champion.version != current):
            changed = self.champion is not None
            self.champion = load_champion(self.settings)
            if self.champion is not None:
                log.info("drift reference: champion version %s", self.champion.version)
            if changed:  # the missed fraud of the new champion's own scores, from its first day
                self.missed_fraud = performance.MissedFraudAlarm(self.settings.drift_windows_required)

    def _active(self) -> set[str]:
        return set().union(*(alarm.active for alarm in self.alarms.values()))

    def _evaluate(self, end: pd.Timestamp) -> list[WindowResult]:
        self._refresh_champion()
        self.windows_evaluated += 1
        results = []
        if self.champion is not None:
            before = self._active()
            rows = self._champion_rows(end)
            by_hours = rows[rows["event_time"] >= end - self.window]
            by_count = rows.tail(self.settings.drift_window_decisions)
            for kind, frame in (("hours", by_hours), ("decisions", by_count)):
                result = self._drift(end, kind, frame)
                if result is not None:
                    results.append(result)
            self.metrics.drift_alarm.set(1 if self._active() else 0)
            raised = sorted(self._active() - before)
            if raised:
                frame = by_hours if len(by_hours) >= self.settings.drift_min_rows else by_count
                self._raise(end, raised, frame, results)
        self._performance(end)
        for name, hook in self.hooks.items():
            try:
                self.hook_reports[name] = hook(self, end)
            except Exception as error:  # one failing part must not stop the monitor
                log.exception("%s failed at %s", name, end)
                self.hook_reports[name] = {"error": f"{type(error).__name__}: {error}"}
        return results

    def _champion_rows(self, end: pd.Timestamp) -> pd.DataFrame:
        assert self.champion is not None
        p = self.state.predictions
        mask = (
            (p["event_time"] < end)
            & p["served_by"].isin(MODEL_SCORED)
            & (p["model_version"] == self.champion.version)
        )
        return p[mask].sort_values("event_time", kind="stable")

    def _drift(self, end: pd.Timestamp, kind: str, frame: pd.DataFrame) -> WindowResult | None:
        assert self.champion is not None
        if len(frame) < self.settings.drift_min_rows:
            self.metrics.drift_windows.labels("skipped").inc()
            return None
        results = drift.feature_drift(self.champion.reference, frame)
        alarmed = [r for r in results if r.column in ALARM_COLUMNS]
        update = self.alarms[kind].update(end.to_pydatetime(), alarmed)
        if kind == "hours" or self.latest.get("hours") is None or self.latest["hours"].end != end:
            drift.publish(self.metrics, results, update)  # the gauges show the hours window
        if kind == "hours":
            for r in results:
                history = self.psi_history.setdefault(r.column, [])
                history.append(r.psi)
                del history[:-PSI_HISTORY]
        result = WindowResult(end, kind, len(frame), results, update.raised, sorted(update.active))
        self.latest[kind] = result
        return result

    def _raise(
        self, end: pd.Timestamp, raised: list[str], frame: pd.DataFrame, results: list[WindowResult]
    ) -> None:
        """A sustained alarm: audited with its numbers, its Evidently report written (elsewhere)."""
        assert self.champion is not None
        if self.drift_alarm_at is None:
            self.drift_alarm_at = end
        self.drifted_features += [c for c in raised if c not in self.drifted_features]
        numbers = {
            f"{w.kind}.{r.column}": {"psi": round(r.psi, 4), "ks_pvalue": float(f"{r.ks_pvalue:.3g}")}
            for w in results
            for r in w.results
            if r.column in raised
        }
        name = f"drift-{end.strftime('%Y%m%dT%H%M')}.html"
        columns = drift.DRIFT_COLUMNS
        self.worker.submit(
            write_report,
            self.settings,
            self.champion.reference[columns],
            frame[columns],
            name,
            self.champion.version,
        )
        self.reports.insert(0, {"name": name, "at": end.isoformat(), "features": raised})
        audit.record(
            self.settings,
            "drift_alarm",
            f"{', '.join(raised)} drifted in {self.settings.drift_windows_required} windows in a row "
            f"(window ending {end.isoformat()}; PSI > {drift.DriftThresholds().psi:g} and KS p < "
            f"{drift.DriftThresholds().ks_pvalue:g})",
            actor="monitor",
            versions={"champion": self.champion.version},
            numbers={"window_end": end.isoformat(), "window_rows": len(frame), "columns": numbers},
        )
        self.metrics.monitor_actions.labels("drift_alarm").inc()
        log.warning("drift alarm: %s (window ending %s)", ", ".join(raised), end)

    # --- performance ------------------------------------------------------------------------
    def _performance(self, end: pd.Timestamp) -> None:
        predictions = self.state.predictions
        if predictions.empty:
            return
        now = self.now(end)
        frame = performance.join_labels(predictions[predictions["event_time"] < end], self.state.labels, now)
        cost = self.champion.cost if self.champion is not None else None
        self.expected = performance.estimate(frame, cost=cost)
        matured_through = (now - pd.Timedelta(days=self.settings.maturity_days)).floor("D")
        if self._matured_through is None or matured_through > self._matured_through:
            self._matured_through = matured_through  # a new day matured: the intervals are worth it
            settings = performance.PerformanceSettings(maturity=timedelta(days=self.settings.maturity_days))
            self.realised = performance.matured(frame, now, cost, settings)
            self._judge_missed_fraud(frame, now, settings)
        performance.publish_performance(
            self.metrics,
            self.expected,
            self.realised if self.realised is not None else self.expected.iloc[0:0],
        )

    def _judge_missed_fraud(
        self, frame: pd.DataFrame, now: pd.Timestamp, settings: performance.PerformanceSettings
    ) -> None:
        """The champion's latest matured days: did the labels find fraud its scores did not expect?"""
        if self.champion is None:
            return
        gaps = performance.missed_fraud(frame, now, self.settings.missed_fraud_days, settings)
        key = ("champion", str(self.champion.version))
        gap = gaps.loc[key] if key in gaps.index else None
        if not self.missed_fraud.update(now, gap):
            return
        latest = self.missed_fraud.latest
        audit.record(
            self.settings,
            "performance_alarm",
            f"the labels found {latest['found_fraud']:.0f} frauds among the passed transactions of the "
            f"{self.settings.missed_fraud_days} matured days to {latest['last_day']}, where the scores "
            f"expected {latest['expected_fraud']:.0f} (z {latest['z']:.1f}, "
            f"{self.settings.drift_windows_required} matured days in a row)",
            actor="monitor",
            versions={"champion": self.champion.version},
            numbers=latest,
        )
        self.metrics.monitor_actions.labels("performance_alarm").inc()
        log.warning("performance alarm: labels found more fraud than the scores expected (%s)", latest)

    # --- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_window_end": None if self.last_window_end is None else self.last_window_end.isoformat(),
            "alarms": {kind: alarm.state_dict() for kind, alarm in self.alarms.items()},
            "psi_history": self.psi_history,
            "reports": self.reports,
            "drift_alarm_at": None if self.drift_alarm_at is None else self.drift_alarm_at.isoformat(),
            "drifted_features": self.drifted_features,
            "windows_evaluated": self.windows_evaluated,
            "matured_through": None if self._matured_through is None else self._matured_through.isoformat(),
            "missed_fraud": self.missed_fraud.state_dict(),
            "hooks": {
                name: hook.state_dict() for name, hook in self.hooks.items() if hasattr(hook, "state_dict")
            },
        }

    def restore(self, content: dict[str, Any]) -> None:
        if not content:
            return
        stamp = content.get("last_window_end")
        self.last_window_end = None if stamp is None else pd.Timestamp(stamp)
        for kind, alarm_state in content.get("alarms", {}).items():
            self.alarms[kind] = drift.DriftAlarm.from_state(alarm_state)
        self.psi_history = {k: list(v) for k, v in content.get("psi_history", {}).items()}
        self.reports = list(content.get("reports", []))
        stamp = content.get("drift_alarm_at")
        self.drift_alarm_at = None if stamp is None else pd.Timestamp(stamp)
        self.drifted_features = list(content.get("drifted_features", []))
        self.windows_evaluated = int(content.get("windows_evaluated", 0))
        self.missed_fraud.restore(content.get("missed_fraud", {}))
        for name, hook_state in content.get("hooks", {}).items():
            restore = getattr(self.hooks.get(name), "restore", None)
            if restore is not None:
                restore(hook_state)
        # Matured cohorts are recomputed on the next window: they depend only on the rows.

    # --- what the page and --json show ----------------------------------------------------------
    def _serving(self) -> dict[str, Any]:
        """The challenger and the canary share, as the guard last saw them."""
        guard = self.hook_reports.get("canary") or {}
        challenger = (guard.get("report") or {}).get("challenger")
        return {
            "challenger": {"version": str(challenger), "model_type": "?"} if challenger else None,
            "canary_percent": guard.get("percent"),
        }

    def snapshot(self) -> dict[str, Any]:
        counts = self.state.counts()
        predictions = self.state.predictions
        hours = self.latest.get("hours") or self.latest.get("decisions")
        features = (
            []
            if hours is None
            else page.drift_rows(hours.results, self._active(), self.psi_history, ALARM_COLUMNS)
        )
        return {
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "event_time": None if self.last_window_end is None else self.last_window_end.isoformat(),
            "champion": None
            if self.champion is None
            else {"version": self.champion.version, "model_type": self.champion.model_type},
            **self._serving(),
            "counts": {
                "predictions": counts["predictions"],
                "labels": counts["labels"],
                "labelled_predictions": int(
                    predictions["transaction_id"].isin(self.state.labels["transaction_id"]).sum()
                )
                if len(predictions)
                else 0,
                "windows_evaluated": self.windows_evaluated,
            },
            "drift": {
                "window_end": None if hours is None else hours.end.isoformat(),
                "window_rows": None if hours is None else hours.rows,
                "alarm": any(a.alarmed for a in self.alarms.values()),
                "alarm_since": None if self.drift_alarm_at is None else self.drift_alarm_at.isoformat(),
                "alarmed_features": sorted(set().union(*(a.active for a in self.alarms.values()))),
                "drifted_features": self.drifted_features,
                "features": features,
            },
            "reports": self.reports[:10],
            "performance": {
                "expected": page.records(self.expected),
                "matured": page.records(self.realised),
                "maturity_days": self.settings.maturity_days,
                "missed_fraud": {
                    "alarm": self.missed_fraud.raised_at is not None,
                    "since": self.missed_fraud.since,
                    "streak": self.missed_fraud.streak,
                    "latest": self.missed_fraud.latest,
                    "pooled_days": self.settings.missed_fraud_days,
                },
            },
            **{name: report for name, report in self.hook_reports.items() if report is not None},
            "audit": list(reversed(audit.read(self.settings, last=50))),
        }


MONITOR_EXPERIMENT = "fraud-detector-monitoring"


class Worker:
    """Slow work in a process of its own, so the consumer keeps polling: an Evidently report
    takes 4-30 s of pure-Python plotting, a skew check 1-7 s of Feast joins (measured, more on
    a busy machine). One process, started on first use, kept warm (its imports stay loaded)."""

    def __init__(self) -> None:
        self._pool: Any = None
        self._futures: list[Any] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker
            )
        future = self._pool.submit(fn, *args)
        self._futures = [f for f in self._futures if not f.done()] + [future]
        return future

    def close(self, wait: bool = True) -> None:
        """Wait for the work in progress (a drill reads the reports), then stop the process."""
        for future in self._futures:
            try:
                future.result() if wait else future.cancel()
            except Exception as error:  # an alarm stands without its page
                log.error("background work failed: %s", error)
        self._futures = []
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
            self._pool = None


def _quiet_worker() -> None:
    """Evidently's imports warn about their own dependencies' deprecations: not the user's."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("feast", "mlflow", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def write_report(
    settings: Settings, reference: pd.DataFrame, frame: pd.DataFrame, name: str, version: str
) -> str:
    """The Evidently report of one alarm under var/reports/, logged to MLflow as an artifact."""
    import mlflow

    from models import registry

    path = settings.reports_dir / name
    drift.evidently_report(reference, frame, path=path)
    experiment_id = registry.experiment_id(settings, MONITOR_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name.removesuffix(".html")):
        mlflow.set_tag("champion_version", version)
        mlflow.log_artifact(str(path), artifact_path="drift_reports")
    return str(path)
