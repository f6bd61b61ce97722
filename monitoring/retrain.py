"""Retraining: train at `now` on the most recent window, gate the candidate against the champion
on an out-of-time holdout, and make it `challenger` only if it passes.

    now - train_days ──── train (validation tail) ──── now - gap_days ──── holdout ──── now

`now` is event time (in a drill, the replay's clock), never the wall clock. The training is the
existing `fraudctl train` (same Feast point-in-time frame, calibration, thresholds, ONNX parity,
MLflow runs) with `TrainRequest.now`: no transaction at or after `now` and no label reported
after it is read, although a drill's dataset folder holds the days after `now`. The features
are safe too: Feast joins each row with the snapshots strictly before its own event time.

The holdout is the last label delay (`gap_days`) before `now`, and its labels are those known at
`now`: only the chargebacks that arrived quickly (about 10 % of the holdout's fraud for a 7-day
holdout under the simulator's log-normal delay, more for its older days). The candidate and the
champion are scored on the same rows against the same partial labels, so the comparison is fair,
but both numbers are lower than they will be once labels mature, and they favour whatever fraud
is reported fast. The training rows carry the labels known at `now` as well (the freshest the
retraining can know), so a fraud campaign that runs across `now - gap_days` is seen by the
candidate and not by an older champion: that is what a retraining is for, and it makes the
candidate's holdout numbers somewhat optimistic. The matured-cohort checks of the canary guard
come after this gate, not instead of it. And since training ends `gap_days` before `now`, a
retraining run right when a drift starts learns nothing of it: the trigger should wait until
the training window holds days after the drift (or use a shorter `gap_days`).

The gate is MLflow's own: `mlflow.validate_evaluation_results` over `MetricThreshold`s, the
champion's holdout evaluation as the baseline. Partial labels leave few frauds in the holdout (8
of 21,600 rows on the demo's world): there an AP point estimate swings by 0.1 from one fraud to
the next, and a gate on it rejects good candidates by chance. So the AP comparison is the paired
bootstrap of the same rows (as `fraudctl train` compares models with baselines): the candidate
fails when the 95 % interval of its AP minus the champion's lies wholly below `-max_ap_drop`,
i.e. when it is worse beyond doubt. `MetricThreshold` knows floors and required improvements
only (`min_absolute_change` must be > 0), so that is a floor on the interval's upper end,
`ap_diff_vs_champion_ci_high`; a required gain (`min_ap_gain`) is MLflow's own comparison with
the baseline. `mlflow.evaluate` does not compute the metrics: on a table of scores it has no
probabilities (no ROC-AUC, no AP); both sides are measured by `models.evaluation.evaluate`, the
numbers of the model card.

A candidate that fails is not registered: the registry holds what may serve, and a rejected
version there is one `fraudctl promote` typo from serving. Its MLflow runs are still logged
(metrics, ONNX model, card; the gate's numbers as `gate.*` metrics and `gate.json`), and the
`retrain_rejected` audit entry names the run: the evidence stays, and a person can still register
the model from its run.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from core.features import MODEL_FEATURES
from core.settings import Settings
from models import registry
from models.costs import CostModel
from pipelines.train import LIGHTGBM, MLP, Frames, TrainRequest, TrainResult, stdout_to_stderr, train
from pipelines.train_windows import DEFAULT_GAP_DAYS, DEFAULT_RETRAIN_DAYS, Windows

# What the gate reports of each side (and logs to MLflow): ranking first, then the decisions.
GATE_METRICS = tuple(
    "average_precision roc_auc recall_at_1pct_fpr card_precision_at_100 cost savings_vs_approve_all "
    "review_share decline_share fraud_rate rows".split()
)
# Candidate minus champion on the same holdout rows, with paired-bootstrap 95% intervals.
AP_DIFF, AP_DIFF_HIGH = "ap_diff_vs_champion", "ap_diff_vs_champion_ci_high"
DIFFERENCES = tuple(
    f"{key}{end}" for key in (AP_DIFF, "roc_auc_diff_vs_champion") for end in ("", "_ci_low", "_ci_high")
)


@dataclass(frozen=True)
class Gate:
    """The promotion gate's thresholds (each None: not checked)."""

    # A sanity floor on the holdout, champion or not. Not a comparison: with the few labelled
    # frauds of a fresh holdout (8 in the amount-shift drill) ROC-AUC moves by ~0.1 from one
    # fraud to the next, and a floor of 0.8 rejected a candidate that cut the drifted
    # champion's cost by 63 % (measured). The comparisons are the paired intervals below.
    min_roc_auc: float | None = 0.70
    # Fail when AP(candidate) - AP(champion) is below -this beyond doubt (its interval's upper end).
    max_ap_drop: float | None = 0.0
    min_ap_gain: float | None = None  # demand AP(candidate) >= AP(champion) + this (> 0), point values
    # Likewise for ROC-AUC: fail only when it is worse than the champion's beyond doubt.
    max_roc_auc_drop: float | None = 0.0

    def thresholds(self, with_champion: bool) -> dict[str, Any]:
        """`MetricThreshold`s by metric name; the champion comparisons only when there is one."""
        from mlflow.models import MetricThreshold

        checks: dict[str, Any] = {}
        if self.min_roc_auc is not None:
            checks["roc_auc"] = MetricThreshold(threshold=float(self.min_roc_auc), greater_is_better=True)
        if with_champion and self.min_ap_gain is not None:
            checks["average_precision"] = MetricThreshold(
                min_absolute_change=float(self.min_ap_gain), greater_is_better=True
            )
        if with_champion and self.max_ap_drop is not None:
            checks[AP_DIFF_HIGH] = MetricThreshold(threshold=-float(self.max_ap_drop), greater_is_better=True)
        if with_champion and self.max_roc_auc_drop is not None:
            checks["roc_auc_diff_vs_champion_ci_high"] = MetricThreshold(
                threshold=-float(self.max_roc_auc_drop), greater_is_better=True
            )
        return checks

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def describe(self) -> str:
        checks = [
            f"ROC-AUC >= {self.min_roc_auc:g}" if self.min_roc_auc is not None else "",
            f"AP not below champion's - {self.max_ap_drop:g} beyond doubt"
            if self.max_ap_drop is not None
            else "",
            f"AP >= champion's + {self.min_ap_gain:g}" if self.min_ap_gain is not None else "",
            f"ROC-AUC not below champion's - {self.max_roc_auc_drop:g} beyond doubt"
            if self.max_roc_auc_drop is not None
            else "",
        ]
        return ", ".join(c for c in checks if c) or "no checks"


@dataclass
class RetrainResult:
    """What one retraining did; `as_dict()` is the `--json` output and the audit's numbers."""

    now: pd.Timestamp
    reason: str
    model: str
    passed: bool
    gated: bool  # False only for the drill's bad challenger
    version: str | None  # the registered candidate (None: rejected, not registered)
    run_id: str | None  # the MLflow training run (None: a dry run)
    champion_version: str | None
    challenger_before: str | None
    windows: Windows
    gate: Gate
    candidate: dict[str, float]
    champion: dict[str, float] | None
    failures: list[str]
    data: dict[str, Any]  # rows, fraud known, the latest event and label read
    notes: list[str]
    seconds: dict[str, float]
    frames: Frames = field(repr=False)  # the rows it was trained and held out on
    holdout_scores: np.ndarray = field(repr=False)  # the candidate's calibrated holdout scores

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "reason": self.reason,
            "model": self.model,
            "passed": self.passed,
            "gated": self.gated,
            "version": self.version,
            "run_id": self.run_id,
            "champion_version": self.champion_version,
            "challenger_before": self.challenger_before,
            "windows": {
                "train_start": self.windows.train_start.isoformat(),
                "train_end": self.windows.train_end.isoformat(),
                "holdout_start": self.windows.test_start.isoformat(),
                "holdout_end": self.windows.test_end.isoformat(),
                "label_cutoff": self.windows.label_cutoff.isoformat(),
            },
            "gate": {
                "thresholds": self.gate.as_dict(),
                "candidate": self.candidate,
                "champion": self.champion,
                "failures": self.failures,
            },
            "data": self.data,
            "notes": self.notes,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _utc(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(moment)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _check_store_holds(settings: Settings, data_dir: Path) -> None:
    """A retraining never backfills: a backfill rebuilds the online store that serving reads (and
    in a drill would load it with the days after `now`)."""
    from core.dataset import dataset_fingerprint
    from pipelines.backfill import backfilled_fingerprint

    if backfilled_fingerprint(settings) != dataset_fingerprint(data_dir):
        raise ValueError(
            f"the feature store does not hold {data_dir}: run `fraudctl backfill --data {data_dir}` "
            "first (a retraining never backfills: that would rebuild the online store serving reads)"
        )


def evaluate_version(
    settings: Settings, version: str, frames: Frames, cost: CostModel
) -> tuple[dict[str, float], np.ndarray]:
    """A registered version's holdout metrics and scores, from its ONNX file and stored thresholds."""
    from models.evaluation import evaluate
    from models.runtime import OnnxScorer

    loaded = registry.load_version(settings, version=version)
    if list(loaded.metadata["features"]) != list(MODEL_FEATURES):
        raise ValueError(f"version {version} was trained on other features; it cannot be compared")
    scorer = OnnxScorer(loaded.onnx_bytes, loaded.metadata)
    scores = scorer.score(frames.x("test"))
    metrics, _ = evaluate(frames.test, scores, scorer.thresholds, cost)
    return metrics, scores


def paired_differences(
    labels: np.ndarray, candidate: np.ndarray, champion: np.ndarray, seed: int
) -> dict[str, float]:
    """Candidate minus champion, AP and ROC-AUC, with paired-bootstrap 95% intervals (`DIFFERENCES`)."""
    from models.evaluation import baseline_differences
    from pipelines.train import BOOTSTRAP_RESAMPLES

    scores = {"candidate": candidate, registry.CHAMPION: champion}
    both = baseline_differences(
        labels, scores, ("candidate",), (registry.CHAMPION,), BOOTSTRAP_RESAMPLES, seed
    )
    return {key: float(value) for key, value in both["candidate"].items()}


def check_gate(gate: Gate, candidate: dict[str, float], champion: dict[str, float] | None) -> list[str]:
    """MLflow's validation of the candidate against the champion; the failure messages (empty: pass)."""
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    if champion is not None:  # MLflow reads every gated metric of the baseline too: 0 against itself
        champion = {**champion, **dict.fromkeys(DIFFERENCES, 0.0)}
    checks = gate.thresholds(with_champion=champion is not None)
    if not checks:
        return []
    try:
        mlflow.validate_evaluation_results(
            checks,
            EvaluationResult(candidate, {}, run_id=""),
            None if champion is None else EvaluationResult(champion, {}, run_id=""),
        )
    except ModelValidationFailedException as failed:
        return [line for line in failed.message.split(os.linesep) if line]
    return []


def _holdout_label_share(frames: Frames, now: pd.Timestamp) -> float:
    """Of the holdout's fraud, the share whose label had arrived by `now`, under the simulator's
    label delay (`monitoring.performance.LabelDelay`): what "partial labels" means here."""
    from monitoring.performance import SIMULATOR_UNREPORTED_SHARE, LabelDelay

    delay = LabelDelay("simulator", SIMULATOR_UNREPORTED_SHARE, 60.0, 0)
    ages = (now - frames.test["event_time"]) / pd.Timedelta(days=1)
    return float(delay.share_by(ages.to_numpy()).mean())


@dataclass(frozen=True)
class Plan:
    """What determines one retraining, besides the data and the registry's state."""

    now: pd.Timestamp
    reason: str
    train_days: float
    gap_days: float
    model: str
    seed: int
    gate: Gate
    data_dir: Path
    by: str
    shuffled: bool = False  # the drill's bad challenger only

    def request(self, cost: CostModel) -> TrainRequest:
        """The `fraudctl train` request: [now - train_days, now - gap_days) | holdout | now."""
        holdout_start = self.now - pd.Timedelta(days=self.gap_days)
        return TrainRequest(
            data_dir=self.data_dir,
            train_start=self.now - pd.Timedelta(days=self.train_days),
            train_end=holdout_start,
            gap_days=0,  # the holdout *is* the label delay after training (module docstring)
            test_start=holdout_start,
            test_end=self.now,
            models=(self.model,),
            seed=self.seed,
            cost=cost,
            register=False,  # logged and registered by `_record`, once the gate has spoken
            now=self.now,
            drill_shuffled_labels=self.shuffled,
        )


def retrain(
    settings: Settings,
    now: datetime | pd.Timestamp,
    reason: str,
    *,
    train_days: float = DEFAULT_RETRAIN_DAYS,
    gap_days: float = DEFAULT_GAP_DAYS,
    model: str = LIGHTGBM,
    seed: int = 7,
    gate: Gate | None = None,
    data_dir: Path | None = None,
    by: str = "monitor",
    register: bool = True,
    console: Console | None = None,
) -> RetrainResult:
    """Train at `now`, gate against the champion on the holdout, register as challenger if it passes.

    Args:
        now: event time of the retraining (a drill: the replay's clock); naive means UTC.
        reason: why (drift alarm, matured-cohort drop, schedule, by hand): goes to the audit.
        train_days, gap_days: training is [now - train_days, now - gap_days), the holdout
            [now - gap_days, now); labels as known at `now` for both.
        gate: the thresholds; `Gate()` by default.
        data_dir: the dataset folder (default: the settings'); the feature store must hold it.
        by: the actor in the audit trail and the alias log.
        register: False for a dry run: trained and gated, but nothing logged, registered,
            aliased or audited.

    Returns:
        The numbers of both sides, MLflow's failure messages, and what was registered.
    """
    data_dir = data_dir or settings.demo_data_dir
    plan = Plan(_utc(now), reason, train_days, gap_days, model, seed, gate or Gate(), data_dir, by)
    return _run(settings, plan, register, console)


def train_bad_challenger(
    settings: Settings,
    now: datetime | pd.Timestamp,
    reason: str = "drill: bad challenger trained on shuffled labels",
    *,
    train_days: float = DEFAULT_RETRAIN_DAYS,
    gap_days: float = DEFAULT_GAP_DAYS,
    seed: int = 7,
    data_dir: Path | None = None,
    by: str = "drill",
    console: Console | None = None,
) -> RetrainResult:
    """DRILL TOOL (`fraudctl drill bad-challenger`): a LightGBM trained on shuffled labels, made
    `challenger` WITHOUT the gate, so that the canary guard has something bad to stop. The gate's
    numbers are still computed and returned (they fail); the version is tagged `drill`."""
    data_dir = data_dir or settings.demo_data_dir
    plan = Plan(_utc(now), reason, train_days, gap_days, LIGHTGBM, seed, Gate(), data_dir, by, shuffled=True)
    return _run(settings, plan, True, console)


def _summary(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in GATE_METRICS if k in metrics}


def _run(settings: Settings, plan: Plan, register: bool, console: Console | None) -> RetrainResult:
    """Train, score the champion on the same holdout, gate; then `_record` what happened."""
    if plan.model not in (LIGHTGBM, MLP):
        raise ValueError(f"unknown model {plan.model!r}; a retraining trains lightgbm or mlp")
    if not 0 < plan.gap_days < plan.train_days:
        raise ValueError(f"need 0 < gap days ({plan.gap_days:g}) < train days ({plan.train_days:g})")
    _check_store_holds(settings, plan.data_dir)
    champion_version = registry.current_version(registry.connect(settings), registry.CHAMPION)
    champion_meta = None
    cost = CostModel()  # with a champion, its cost model: both sides pay the same prices
    if champion_version is not None:
        champion_meta = registry.load_version(settings, version=champion_version).metadata
        cost = CostModel(**champion_meta["cost_model"])
    request = plan.request(cost)
    trained = train(settings, request, console)
    frames = trained.frames
    assert frames is not None  # train() always returns its frames
    started = time.perf_counter()
    champion = None
    candidate = _summary(trained.candidates[plan.model].metrics)
    if champion_version is not None:
        champion_metrics, champion_scores = evaluate_version(settings, champion_version, frames, cost)
        champion = _summary(champion_metrics)
        scores = trained.candidates[plan.model].test_scores
        candidate |= paired_differences(frames.y("test"), scores, champion_scores, plan.seed)
    failures = check_gate(plan.gate, candidate, champion)
    trained.seconds["gate"] = time.perf_counter() - started
    share = _holdout_label_share(frames, plan.now)
    notes = [
        f"holdout labels are those known at now: partial (about {share:.0%} of its fraud under "
        "the simulator's delay), for candidate and champion alike"
    ]
    if champion_meta is None:
        notes.append("no champion: only the floors were checked")
    elif pd.Timestamp(champion_meta["windows"]["train_end"]) > frames.windows.test_start:
        notes.append(
            f"the champion was trained on rows of this holdout (until "
            f"{champion_meta['windows']['train_end']}): its numbers are in-sample"
        )
    result = RetrainResult(
        now=plan.now,
        reason=plan.reason,
        model=plan.model,
        passed=not failures,
        gated=not plan.shuffled,
        version=None,
        run_id=None,
        champion_version=champion_version,
        challenger_before=None,
        windows=frames.windows,
        gate=plan.gate,
        candidate=candidate,
        champion=champion,
        failures=failures,
        data={
            "train_rows": len(frames.train) + len(frames.valid),
            "train_fraud_known": int(frames.train["label"].sum() + frames.valid["label"].sum()),
            "holdout_rows": len(frames.test),
            "holdout_fraud_known": int(frames.test["label"].sum()),
            "latest_event_read": max(
                f["event_time"].max() for f in (frames.train, frames.valid, frames.test)
            ).isoformat(),
            "drill_shuffled_labels": plan.shuffled,
        },
        notes=notes,
        seconds=trained.seconds,
        frames=frames,
        holdout_scores=trained.candidates[plan.model].test_scores,
    )
    if register:
        _record(settings, plan, request, trained, result)
    return result


def _record(
    settings: Settings, plan: Plan, request: TrainRequest, trained: TrainResult, result: RetrainResult
) -> None:
    """Log the runs (always), register and alias (gate passed, or the drill), and audit."""
    from monitoring import audit
    from pipelines.train_tracking import log_runs

    started = time.perf_counter()
    verdict = "skipped (drill)" if plan.shuffled else "passed" if result.passed else "failed"
    tags = {
        "retrain.reason": plan.reason,
        "retrain.now": plan.now.isoformat(),
        "retrain.by": plan.by,
        "gate": verdict,
    }
    metrics = {f"gate.candidate.{k}": v for k, v in result.candidate.items()} | {
        f"gate.champion.{k}": v for k, v in (result.champion or {}).items()
    }
    assert trained.frames is not None
    logged = log_runs(
        settings,
        request,
        trained.frames,
        trained.candidates,
        register=result.passed or plan.shuffled,
        tags=tags,
        metrics=metrics,
    )
    result.run_id, result.version = logged.parent_run_id, logged.versions.get(plan.model)
    client = registry.connect(settings)
    client.log_dict(logged.parent_run_id, _finite_or_none(result.as_dict()), "gate.json")
    result.challenger_before = registry.current_version(client, registry.CHALLENGER)
    if result.version is not None:
        for key, value in {**tags, **({"drill": "shuffled_labels"} if plan.shuffled else {})}.items():
            client.set_model_version_tag(registry.MODEL_NAME, result.version, key, value)
    versions = {
        "candidate": result.version,
        "champion": result.champion_version,
        "challenger_before": result.challenger_before,
    }
    numbers = {k: v for k, v in result.as_dict().items() if k in ("now", "gate", "data", "run_id", "windows")}
    if plan.shuffled:  # the drill: the alias move is audited by `promote` itself
        registry.promote(
            settings,
            str(result.version),
            registry.CHALLENGER,
            reason=f"{plan.reason} (gate skipped)",
            by=plan.by,
        )
    elif result.passed:
        audit.record(
            settings,
            "retrain",
            plan.reason,
            actor=plan.by,
            versions=versions,
            numbers=_finite_or_none(numbers),
        )
        registry.promote(
            settings,
            str(result.version),
            registry.CHALLENGER,
            reason=f"retrain passed the gate: {plan.reason}",
            by=plan.by,
        )
    else:
        audit.record(
            settings,
            "retrain_rejected",
            plan.reason,
            actor=plan.by,
            versions=versions,
            numbers=_finite_or_none(numbers),
        )
    result.seconds["record"] = time.perf_counter() - started


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (no fraud labelled yet, say) prints as null."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def print_result(console: Console, result: RetrainResult) -> None:
    """The gate as a table (holdout metrics of both sides), the verdict and MLflow's reasons."""
    from rich.table import Table

    w = result.windows
    table = Table(
        title=f"holdout {w.test_start:%Y-%m-%d %H:%M} → {w.test_end:%Y-%m-%d %H:%M}, labels known at now "
        f"({result.data['holdout_fraud_known']} fraud of {result.data['holdout_rows']:,} rows)"
    )
    for column in ("metric", f"candidate ({result.model})", f"champion (v{result.champion_version})"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key in GATE_METRICS:
        champion = "–" if result.champion is None else f"{result.champion[key]:.4g}"
        table.add_row(key, f"{result.candidate[key]:.4g}", champion)
    console.print(table)
    if AP_DIFF in result.candidate:
        c = result.candidate
        console.print(
            f"candidate − champion, same rows (95% paired bootstrap): AP {c[AP_DIFF]:+.3f} "
            f"[{c[AP_DIFF + '_ci_low']:+.3f}, {c[AP_DIFF_HIGH]:+.3f}], ROC-AUC "
            f"{c['roc_auc_diff_vs_champion']:+.3f} [{c['roc_auc_diff_vs_champion_ci_low']:+.3f}, "
            f"{c['roc_auc_diff_vs_champion_ci_high']:+.3f}]"
        )
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    if not result.gated:
        console.print(f"[yellow]drill[/]: version {result.version} is challenger without the gate")
    elif result.passed:
        where = f"version {result.version} is challenger" if result.version else "dry run: nothing registered"
        console.print(f"[green]gate passed[/] ({result.gate.describe()}): {where}")
    else:
        console.print(f"[red]gate failed[/] ({result.gate.describe()}): nothing registered or aliased")
        for failure in result.failures:
            console.print(f"  {failure}")
        if result.run_id:
            console.print(f"  the runs stay in MLflow for review: run {result.run_id}")


def cli_step(
    settings: Settings,
    data_dir: Path,
    now: datetime | None,
    reason: str,
    train_days: float,
    gap_days: float,
    model: str,
    seed: int,
    gate: Gate,
    register: bool,
    json_output: bool,
) -> None:
    """`fraudctl train --retrain`: the step as a person runs it. Exit 3 when the gate rejects."""
    import getpass

    import typer

    from core.dataset import read_transactions

    if now is None:  # the end of the data's last day: everything the dataset knows
        now = read_transactions(data_dir)["event_time"].max().floor("D") + pd.Timedelta(days=1)
    console = Console(stderr=json_output)
    with stdout_to_stderr() if json_output else contextlib.nullcontext():
        result = retrain(
            settings,
            now,
            reason,
            train_days=train_days,
            gap_days=gap_days,
            model=model,
            seed=seed,
            gate=gate,
            data_dir=data_dir,
            by=getpass.getuser(),
            register=register,
            console=console,
        )
    if json_output:
        typer.echo(json.dumps(_finite_or_none(result.as_dict()), default=str))
    else:
        print_result(console, result)
    if not result.passed:
        raise typer.Exit(3)
