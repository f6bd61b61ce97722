"""`fraudctl train`: point-in-time data → LightGBM and MLP → calibrated, cost-aware decisions
→ ONNX (parity-gated) → MLflow runs and the `fraud-detector` registry.

The steps, in order:

1. Backfill the dataset's features into Feast if the store does not hold this dataset yet.
2. Split by time (`pipelines.train_windows`) and build the frame through Feast's
   point-in-time join: training and validation labels as reported by the cutoff, test
   labels as every label the dataset holds.
3. Fit the baselines (rules, logistic regression) and the models; calibrate each on the
   validation window; choose each one's decision thresholds from the cost model there.
4. Evaluate everything on the test window.
5. Export the models to ONNX and check parity on every test row; any mismatch stops here.
6. Log one MLflow run per training (baselines, the table) with a nested run per model
   (plots, predictions, native + ONNX model) and register the models.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from rich.console import Console

from core.dataset import DatasetError, dataset_fingerprint, read_labels, read_transactions
from core.features import MODEL_FEATURES
from core.settings import Settings, get_settings
from models import calibration
from models.baselines import LogisticBaseline, rules_score
from models.calibration import Method
from models.costs import CostModel, Thresholds, choose_thresholds
from models.evaluation import baseline_differences, diff_key, evaluate
from models.metrics import average_precision
from pipelines.train_windows import DEFAULT_GAP_DAYS, DEFAULT_RETRAIN_DAYS, Windows, choose_windows

RULES, LOGISTIC = "rules", "logistic_regression"
LIGHTGBM, MLP = "lightgbm", "mlp"
BASELINES = (LOGISTIC, RULES)
# Paired bootstrap of the test rows for the model-vs-baseline intervals: 1,000 resamples put
# the 2.5th and 97.5th percentiles on 25 resamples each; ~2 s on the demo's 25k test rows.
BOOTSTRAP_RESAMPLES = 1_000


@dataclass
class TrainRequest:
    """Everything that determines a training run."""

    data_dir: Path
    train_start: datetime | None = None
    train_end: datetime | None = None
    gap_days: float = DEFAULT_GAP_DAYS
    test_start: datetime | None = None
    test_end: datetime | None = None
    models: tuple[str, ...] = (LIGHTGBM, MLP)
    seed: int = 7
    cost: CostModel = field(default_factory=CostModel)
    calibration: Method = "platt"
    register: bool = True
    # Train *at* this time (event time; a drill's replay clock): transactions at or after it
    # and labels reported after it are never read, and every window's labels are those known
    # at it (`train_windows`). None: a backtest over the whole dataset.
    now: datetime | None = None
    # Drill only (`fraudctl drill bad-challenger`): permute the training and validation labels,
    # so the model learns nothing. Never set by `fraudctl train`.
    drill_shuffled_labels: bool = False


@dataclass
class Frames:
    """The three windows' rows: `KEEP_COLUMNS`, `MODEL_FEATURES`, `label`."""

    windows: Windows
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    fingerprint: str

    def x(self, part: str) -> np.ndarray:
        return np.ascontiguousarray(getattr(self, part)[MODEL_FEATURES].to_numpy(dtype=np.float32))

    def y(self, part: str) -> np.ndarray:
        return np.asarray(getattr(self, part)["label"].to_numpy(dtype=np.int64))


@dataclass
class Candidate:
    """A fitted, calibrated, thresholded and evaluated scorer (a model or a baseline)."""

    name: str
    native: Any  # LightGBMModel / MLPModel / LogisticBaseline / None (rules)
    calibration: dict[str, Any]
    thresholds: Thresholds
    raw_test: np.ndarray
    test_scores: np.ndarray
    valid_scores: np.ndarray
    metrics: dict[str, float]
    breakdowns: dict[str, Any]
    fit_seconds: float
    onnx_bytes: bytes | None = None
    parity_max_diff: float | None = None


def ensure_backfilled(settings: Settings, data_dir: Path, progress: bool = False) -> bool:
    """Backfill ``data_dir`` unless the feature store already holds exactly it. True if it ran."""
    from pipelines.backfill import backfill, backfilled_fingerprint

    if backfilled_fingerprint(settings) == dataset_fingerprint(data_dir):
        return False
    backfill(data_dir, settings, progress=progress)
    return True


def prepare_frames(settings: Settings, request: TrainRequest, progress: bool = False) -> Frames:
    """Backfill if needed, split by time, and build the point-in-time frames of each window."""
    from feature_repo.store import open_store
    from pipelines.training_data import build_training_frame, labels_as_of

    data_dir = Path(request.data_dir)
    fingerprint = dataset_fingerprint(data_dir) if (data_dir / "manifest.json").exists() else ""
    transactions, labels = read_transactions(data_dir), read_labels(data_dir)
    now = None if request.now is None else pd.Timestamp(request.now)
    if now is not None:  # a drill's dataset holds days past `now`: cut them before anything else
        now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
        transactions = transactions[transactions["event_time"] < now]
        labels = labels[labels["reported_at"] <= now]
    if transactions.empty:
        before = "" if now is None else f" before {now}"
        raise DatasetError(f"{data_dir} holds no transactions{before}")
    windows = choose_windows(
        transactions["event_time"].min(),
        transactions["event_time"].max(),
        request.train_start,
        request.train_end,
        request.gap_days,
        request.test_start,
        request.test_end or now,
        now,
    )
    ensure_backfilled(settings, data_dir, progress=progress)
    times = transactions["event_time"]
    used = transactions[
        ((times >= windows.train_start) & (times < windows.train_end))
        | ((times >= windows.test_start) & (times < windows.test_end))
    ]
    frame = build_training_frame(open_store(settings), used, labels, windows.label_cutoff)
    test_rows = frame["event_time"] >= windows.test_start
    # The test window is judged by every label the dataset holds, as a backtest can know them
    # (a retraining: every label known at `now`, partial for the last days).
    eventual = labels_as_of(labels, labels["reported_at"].max()) if not labels.empty else set()
    frame.loc[test_rows, "label"] = frame.loc[test_rows, "transaction_id"].isin(eventual).astype("int8")
    parts = {
        "train": frame[frame["event_time"] < windows.valid_start],
        "valid": frame[
            (frame["event_time"] >= windows.valid_start) & (frame["event_time"] < windows.train_end)
        ],
        "test": frame[test_rows],
    }
    cutoff = f"{windows.label_cutoff:%Y-%m-%d %H:%M}"
    for name, part in parts.items():
        if part.empty:
            raise ValueError(f"no transactions in the {name} window ({windows.as_dict()})")
        if name != "test" and part["label"].sum() == 0:
            raise ValueError(
                f"no fraud known in the {name} window by the label cutoff {cutoff}: "
                "widen the training window or the gap (--gap-days), or use more data"
            )
    if parts["test"]["label"].sum() == 0:
        raise ValueError("no fraud labelled in the test window: nothing to evaluate against")
    if request.drill_shuffled_labels:
        rng = np.random.default_rng(request.seed)
        for name in ("train", "valid"):
            parts[name] = parts[name].assign(label=rng.permutation(parts[name]["label"].to_numpy()))
    train, valid, test = (part.reset_index(drop=True) for part in parts.values())
    return Frames(windows, train, valid, test, fingerprint)


def _fit_model(name: str, frames: Frames, seed: int) -> tuple[Any, Any]:
    """Fit one model; returns (native model, raw predict function on float32 arrays)."""
    if name == LIGHTGBM:
        from models.lightgbm_model import LightGBMModel

        lgbm = LightGBMModel(seed=seed)
        lgbm.fit(frames.x("train"), frames.y("train"), frames.x("valid"), frames.y("valid"))
        return lgbm, lgbm.predict
    if name == MLP:
        from models.mlp import MLPModel

        mlp = MLPModel(seed=seed)
        mlp.fit(frames.x("train"), frames.y("train"), frames.x("valid"), frames.y("valid"))
        return mlp, mlp.predict
    if name == LOGISTIC:
        logistic = LogisticBaseline(seed=seed).fit(frames.train, frames.y("train"))
        return logistic, lambda x: logistic.predict(pd.DataFrame(x, columns=MODEL_FEATURES))
    if name == RULES:
        return None, lambda x: rules_score(pd.DataFrame(x, columns=MODEL_FEATURES))
    raise ValueError(f"unknown model {name!r}; choose lightgbm, mlp or all")


def fit_candidate(name: str, frames: Frames, request: TrainRequest, rules_cost: float | None) -> Candidate:
    """Fit, calibrate on validation, choose thresholds on validation, evaluate on test."""
    started = time.perf_counter()
    native, predict = _fit_model(name, frames, request.seed)
    fit_seconds = time.perf_counter() - started
    raw_valid, raw_test = predict(frames.x("valid")), predict(frames.x("test"))
    fitted = calibration.fit(raw_valid, frames.y("valid"), request.calibration)
    valid_scores = calibration.apply(fitted, raw_valid)
    test_scores = calibration.apply(fitted, raw_test)
    thresholds = choose_thresholds(
        valid_scores, frames.y("valid"), frames.valid["amount"].to_numpy(), request.cost
    )
    metrics, breakdowns = evaluate(frames.test, test_scores, thresholds, request.cost, rules_cost)
    metrics["valid_average_precision"] = average_precision(frames.y("valid"), valid_scores)
    return Candidate(
        name,
        native,
        fitted,
        thresholds,
        raw_test,
        test_scores,
        valid_scores,
        metrics,
        breakdowns,
        fit_seconds,
    )


def export_and_check(candidate: Candidate, frames: Frames) -> None:
    """ONNX export and the parity gate on every test row (raises `ParityError`)."""
    from models.onnx_export import check_parity, lightgbm_to_onnx, mlp_to_onnx

    n = len(MODEL_FEATURES)
    if candidate.name == LIGHTGBM:
        candidate.onnx_bytes = lightgbm_to_onnx(candidate.native.classifier, n)
    else:
        candidate.onnx_bytes = mlp_to_onnx(candidate.native.module, n)
    candidate.parity_max_diff = check_parity(candidate.onnx_bytes, candidate.native.predict, frames.x("test"))


@dataclass
class TrainResult:
    windows: Windows
    candidates: dict[str, Candidate]
    versions: dict[str, str]  # model name → registered version
    seconds: dict[str, float]  # per step, for the benchmark's breakdown
    frames: Frames | None = None  # the rows it was trained and tested on

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {name: c.metrics for name, c in self.candidates.items()}


def train(settings: Settings, request: TrainRequest, console: Console | None = None) -> TrainResult:
    """Run the whole stage (see the module docstring); raises with a one-line reason on bad input."""
    request.cost.validate()
    unknown = set(request.models) - {LIGHTGBM, MLP}
    if unknown or not request.models:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose lightgbm, mlp or all")
    console = console or Console(quiet=True)
    seconds: dict[str, float] = {}

    def step(name: str, message: str) -> Any:
        seconds[name] = time.perf_counter()
        return console.status(message)

    def done(name: str, message: str) -> None:
        seconds[name] = time.perf_counter() - seconds[name]
        console.print(f"[green]✓[/] {message} ({seconds[name]:.1f}s)")

    with step("frames", "point-in-time training frame from Feast (backfilling first if needed)…"):
        frames = prepare_frames(settings, request, progress=console.is_terminal)
    done(
        "frames",
        f"frames: train {len(frames.train):,} ({frames.train['label'].sum():,} fraud known), "
        f"validation {len(frames.valid):,} ({frames.valid['label'].sum():,}), "
        f"test {len(frames.test):,} ({frames.test['label'].sum():,})",
    )
    candidates: dict[str, Candidate] = {}
    for name in (RULES, LOGISTIC, *request.models):
        with step(f"fit_{name}", f"fitting {name}…"):
            rules_cost = candidates[RULES].metrics["cost"] if RULES in candidates else None
            candidates[name] = fit_candidate(name, frames, request, rules_cost)
        m = candidates[name].metrics
        done(f"fit_{name}", f"{name}: test AP {m['average_precision']:.3f}, ROC-AUC {m['roc_auc']:.3f}")
    with step("bootstrap", f"paired bootstrap against the baselines ({BOOTSTRAP_RESAMPLES:,} resamples)…"):
        differences = baseline_differences(
            frames.y("test"),
            {name: c.test_scores for name, c in candidates.items()},
            request.models,
            BASELINES,
            BOOTSTRAP_RESAMPLES,
            request.seed,
        )
        for name, values in differences.items():
            candidates[name].metrics.update(values)  # logged to MLflow with the other metrics
    done("bootstrap", f"AP and ROC-AUC of each model minus each baseline, {len(frames.test):,} test rows")
    for name in request.models:
        with step(f"onnx_{name}", f"ONNX export and parity gate for {name}…"):
            export_and_check(candidates[name], frames)
        done(
            f"onnx_{name}",
            f"{name}: ONNX parity on {len(frames.test):,} rows, max diff "
            f"{candidates[name].parity_max_diff:.2g}",
        )
    versions: dict[str, str] = {}
    if request.register:
        from pipelines.train_tracking import log_and_register

        with step("mlflow", "logging runs and registering versions in MLflow…"):
            versions = log_and_register(settings, request, frames, candidates)
        done("mlflow", "registered " + ", ".join(f"{n} as version {v}" for n, v in versions.items()))
    return TrainResult(frames.windows, candidates, versions, seconds, frames)


SHORT_NAMES = {
    "roc_auc": "ROC-AUC",
    "average_precision": "AP",
    "recall_at_1pct_fpr": "recall@1%FPR",
    "card_precision_at_100": "card P@100",
    "ece": "ECE",
    "cost": "cost",
    "savings_vs_approve_all": "saved vs approve-all",
    "savings_vs_rules": "saved vs rules",
    "review_share": "review share",
    "decline_share": "decline share",
}
# Column headers short enough that the tables fit an 80-column terminal.
MODEL_HEADERS = {RULES: "rules", LOGISTIC: "logistic", LIGHTGBM: "LightGBM", MLP: "MLP"}


def _number(value: float) -> str:
    if value != value:  # NaN: not defined for this model (the rules' savings vs the rules)
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.4f}"


def print_table(console: Console, result: TrainResult) -> None:
    """The test-window metrics of every candidate, baselines included: one column per model,
    so that the table fits a narrow terminal whatever the number of metrics."""
    from rich.table import Table

    from models.evaluation import metrics_table

    w = result.windows
    rows = metrics_table(result.metrics)
    table = Table(title=f"test window {w.test_start:%Y-%m-%d} → {w.test_end:%Y-%m-%d} (end exclusive)")
    table.add_column("metric")
    for row in rows:
        table.add_column(MODEL_HEADERS.get(row["model"], row["model"]), justify="right")
    for key, short in SHORT_NAMES.items():
        table.add_row(short, *(_number(row[key]) for row in rows))
    console.print(table)
    console.print(differences_table(result))


def differences_table(result: TrainResult) -> Any:
    """Each model minus each baseline on the test rows, with its paired bootstrap interval.

    A model "beats" a baseline on a metric only where the whole interval is above 0 (✓).
    """
    from rich.table import Table

    table = Table(
        title=f"model − baseline on the same test rows ({BOOTSTRAP_RESAMPLES:,} paired bootstrap resamples)",
        caption="✓ the whole interval is above 0: the model beats the baseline on that metric",
    )
    for column in ("model − baseline", "ΔAP, 95% interval", "ΔROC-AUC, 95% interval"):
        table.add_column(column, justify="left" if column.startswith("model") else "right")
    for name, candidate in result.candidates.items():
        if name in BASELINES:
            continue
        m = candidate.metrics
        for baseline in BASELINES:
            cells = []
            for metric in ("average_precision", "roc_auc"):
                key = diff_key(metric, baseline)
                if key not in m:
                    cells.append("–")
                    continue
                low, high = m[key + "_ci_low"], m[key + "_ci_high"]
                cells.append(f"{m[key]:+.3f} [{low:+.3f}, {high:+.3f}]{' ✓' if low > 0 else '  '}")
            table.add_row(f"{MODEL_HEADERS.get(name, name)} − {MODEL_HEADERS[baseline]}", *cells)
    return table


class ModelChoice(StrEnum):
    lightgbm = LIGHTGBM
    mlp = MLP
    all = "all"


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever is written to stdout meanwhile to stderr, from Python or from C: DuckDB
    (under Feast's offline store) draws its progress bar on file descriptor 1, even into a pipe,
    and `--json` keeps stdout for its one JSON document."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        libc.fflush(None)  # C's buffered stdout goes out before fd 1 is restored
        os.dup2(saved, 1)
        os.close(saved)


def cli(
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder (simulate/import).")] = None,
    train_start: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Training starts (UTC).", show_default="data start"),
    ] = None,
    train_end: Annotated[
        datetime | None,
        typer.Option(
            formats=DATE_FORMATS, help="Training ends (exclusive).", show_default="test start - gap"
        ),
    ] = None,
    gap_days: Annotated[
        float, typer.Option(help="Label delay between training and test, days.")
    ] = DEFAULT_GAP_DAYS,
    test_start: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Test starts.", show_default="last 20% of days"),
    ] = None,
    test_end: Annotated[
        datetime | None,
        typer.Option(formats=DATE_FORMATS, help="Test ends (exclusive).", show_default="data end"),
    ] = None,
    model: Annotated[
        ModelChoice | None,
        typer.Option(help="Which model(s) to train.", show_default="all; --retrain: lightgbm"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 7,
    review_cost: Annotated[float, typer.Option(help="Cost of one manual review.")] = CostModel.review_cost,
    false_decline_share: Annotated[
        float, typer.Option(help="Cost of declining a legitimate purchase, as a share of its amount.")
    ] = CostModel.false_decline_share,
    review_cap: Annotated[
        float, typer.Option(help="Largest share of traffic the review band may hold.")
    ] = CostModel.review_cap,
    calibration_method: Annotated[
        str, typer.Option("--calibration", help="platt or isotonic, fitted on the validation window.")
    ] = "platt",
    register: Annotated[bool, typer.Option(help="Log to MLflow and register the models.")] = True,
    now: Annotated[
        datetime | None,
        typer.Option(
            formats=DATE_FORMATS,
            help="Train at this event time: only transactions before it, labels reported by it.",
            show_default="all the data",
        ),
    ] = None,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain",
            help="Retrain: train [now - train-days, now - gap-days), gate against the champion "
            "on [now - gap-days, now), challenger only if it passes (exit 3 if not).",
        ),
    ] = False,
    train_days: Annotated[
        float, typer.Option(help="--retrain: days from training start to now.")
    ] = DEFAULT_RETRAIN_DAYS,
    reason: Annotated[str, typer.Option(help="--retrain: why, for the audit trail.")] = "by hand",
    min_roc_auc: Annotated[float, typer.Option(help="--retrain gate: holdout ROC-AUC floor.")] = 0.70,
    max_ap_drop: Annotated[
        float,
        typer.Option(
            help="--retrain gate: fail if AP is below the champion's by more than this, beyond doubt."
        ),
    ] = 0.0,
    min_ap_gain: Annotated[
        float | None, typer.Option(help="--retrain gate: AP gain over the champion required.")
    ] = None,
    promote_first: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="Then make LightGBM champion and the MLP challenger, each only if that alias "
            "points at no version yet (the compose stack's init job: safe to re-run).",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Train LightGBM and/or the MLP point-in-time, calibrate, pick cost-based thresholds, register.

    Example: fraudctl train --data var/data --gap-days 3 --model all --seed 7
    Example: fraudctl train --promote   # and give the aliases their first versions
    Example: fraudctl train --retrain --now 2026-02-05 --train-days 28 --gap-days 7 --json
    """
    settings = get_settings()
    if retrain:
        from monitoring import retrain as retraining

        if any(w is not None for w in (train_start, train_end, test_start, test_end)):
            raise ValueError("--retrain chooses its windows from --now, --train-days and --gap-days")
        if model == ModelChoice.all:
            raise ValueError("--retrain trains one model: --model lightgbm or --model mlp")
        gate = retraining.Gate(min_roc_auc, max_ap_drop, min_ap_gain)
        data_dir, chosen = data or settings.demo_data_dir, LIGHTGBM if model is None else model.value
        retraining.cli_step(
            settings, data_dir, now, reason, train_days, gap_days, chosen, seed, gate, register, json_output
        )
        return
    if calibration_method not in ("platt", "isotonic"):
        raise ValueError(f"--calibration must be platt or isotonic, got {calibration_method!r}")
    request = TrainRequest(
        data_dir=data or settings.demo_data_dir,
        train_start=train_start,
        train_end=train_end,
        gap_days=gap_days,
        test_start=test_start,
        test_end=test_end,
        models=(LIGHTGBM, MLP) if model in (None, ModelChoice.all) else (model.value,),
        seed=seed,
        cost=CostModel(review_cost, false_decline_share, review_cap),
        calibration="isotonic" if calibration_method == "isotonic" else "platt",
        register=register,
        now=now,
    )
    console = Console(stderr=json_output)
    with stdout_to_stderr() if json_output else contextlib.nullcontext():
        result = train(settings, request, console)
    if promote_first:
        if not register:
            raise ValueError("--promote needs the models registered (not with --no-register)")
        for line in promote_first_versions(settings, result, by="fraudctl train --promote", keep=True):
            console.print(f"fraud-detector: {line}")
    if json_output:
        summary = {
            "windows": result.windows.as_dict(),
            "versions": result.versions,
            # NaN (not defined for this model, e.g. the rules' savings vs the rules) → null
            "metrics": {
                m: {k: v if v == v else None for k, v in d.items()} for m, d in result.metrics.items()
            },
        }
        typer.echo(json.dumps(summary))
        return
    print_table(console, result)


def promote_first_versions(settings: Settings, result: TrainResult, by: str, keep: bool) -> list[str]:
    """LightGBM of this run becomes champion and its MLP challenger (what was trained of them).

    With `keep`, an alias that already points at a version is left as it is. Returns what
    happened, one line per alias, for the console.
    """
    from models.registry import CHALLENGER, CHAMPION, connect, current_version, promote

    lines = []
    for model, alias in ((LIGHTGBM, CHAMPION), (MLP, CHALLENGER)):
        if model not in result.versions:
            continue
        version = result.versions[model]
        held = current_version(connect(settings), alias) if keep else None
        if held is not None:
            lines.append(f"{alias} stays version {held} (version {version} is registered, not promoted)")
            continue
        promote(settings, version, alias, reason=f"first {alias}", by=by)
        lines.append(f"version {version} ({MODEL_HEADERS[model]}) is [bold]{alias}[/]")
    return lines


def demo_step(settings: Settings, data_dir: Path, console: Console) -> TrainResult:
    """The demo's training step: both models, registered; LightGBM champion, MLP challenger."""
    result = train(settings, TrainRequest(data_dir=data_dir), console)
    print_table(console, result)
    lines = promote_first_versions(settings, result, by="fraudctl demo", keep=False)
    console.print(f"fraud-detector: {', '.join(lines)}")
    return result
