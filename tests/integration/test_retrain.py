"""Retraining at `now` with the promotion gate: real Feast (point-in-time join), real MLflow
(SQLite under tmp, `validate_evaluation_results`), real ONNX Runtime (the champion is scored from
its registered ONNX file).

One world, backfilled once: 35 simulated days, so that a retraining at 2026-01-29 has a week of
transactions and weeks of chargebacks after `now` in the dataset folder, as a drill's has. The
first retraining (no champion yet) becomes champion; the second, a week later, is the genuine
candidate; the same retraining through `fraudctl train --retrain` with an impossible gate must be
rejected (and, trained with the same seed, must give the same model); the drill's bad challenger
is trained on shuffled labels.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from core.dataset import read_labels, read_transactions
from core.settings import Settings
from models import registry
from monitoring import audit
from monitoring.retrain import AP_DIFF, Gate, RetrainResult, check_gate, retrain, train_bad_challenger
from pipelines import simulate
from pipelines import train as train_module
from pipelines.backfill import backfill
from pipelines.training_data import labels_as_of

WORLD = simulate.SimulationParams(days=35, cards=400, merchants=50, seed=5, fraud_rate=0.02)
FIRST_NOW = pd.Timestamp("2026-01-22", tz="UTC")
NOW = pd.Timestamp("2026-01-29", tz="UTC")  # a week of transactions after it in the dataset
TRAIN_DAYS, GAP_DAYS, SEED = 21.0, 7.0, 3  # the CLI run below uses the same
FRAUDCTL = [sys.executable, "-c", "from core.cli import main; main()"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(profile="embedded", var_dir=tmp_path_factory.mktemp("retrain") / "var")


@pytest.fixture(scope="module")
def data(settings: Settings) -> Path:
    out = settings.var_dir / "data"
    simulate.run(out, WORLD)
    backfill(out, settings)  # a retraining never backfills by itself
    return out


@pytest.fixture(scope="module")
def first(settings: Settings, data: Path) -> RetrainResult:
    """No champion yet: only the floors are checked; it becomes the champion."""
    result = retrain(
        settings,
        FIRST_NOW,
        "first model",
        data_dir=data,
        by="tests",
        train_days=TRAIN_DAYS,
        gap_days=GAP_DAYS,
        seed=SEED,
    )
    assert result.passed and result.version is not None, result.as_dict()
    registry.promote(settings, result.version, registry.CHAMPION, reason="first champion", by="tests")
    return result


@pytest.fixture(scope="module")
def genuine(
    settings: Settings, data: Path, first: RetrainResult
) -> tuple[RetrainResult, dict[str, str | None]]:
    """The retraining a week later, and the aliases right after it."""
    result = retrain(
        settings,
        NOW,
        "scheduled",
        data_dir=data,
        by="tests",
        train_days=TRAIN_DAYS,
        gap_days=GAP_DAYS,
        seed=SEED,
    )
    client = registry.connect(settings)
    aliases = {a: registry.current_version(client, a) for a in (registry.CHAMPION, registry.CHALLENGER)}
    return result, aliases


@pytest.mark.slow
def test_nothing_after_now_is_read_and_labels_are_those_known_at_now(
    data: Path, genuine: tuple[RetrainResult, dict[str, str | None]]
) -> None:
    result, _ = genuine
    frames = result.frames
    transactions, labels = read_transactions(data), read_labels(data)
    assert (transactions["event_time"] >= NOW).sum() > 1_000, "the dataset must hold days after now"
    training = pd.concat([frames.train, frames.valid])
    assert training["event_time"].min() >= NOW - pd.Timedelta(days=21)
    assert training["event_time"].max() < NOW - pd.Timedelta(days=7) <= frames.test["event_time"].min()
    assert frames.test["event_time"].max() < NOW
    assert result.windows.label_cutoff == NOW
    rows = pd.concat([training, frames.test])
    known = labels_as_of(labels, NOW)
    eventual = labels_as_of(labels, labels["reported_at"].max())
    labelled = set(rows.loc[rows["label"] == 1, "transaction_id"])
    assert labelled == known & set(rows["transaction_id"])  # exactly the labels reported by now
    # The cutoff bites: fraud whose chargeback came after now stays unlabelled, and in the
    # holdout (at most a week old) that is most of it.
    holdout = set(frames.test["transaction_id"])
    assert len((eventual - known) & holdout) > 3 * len(known & holdout) > 0
    assert result.data["holdout_fraud_known"] == frames.test["label"].sum() > 0
    assert "partial" in result.notes[0]


@pytest.mark.slow
def test_first_retraining_without_a_champion_checks_only_the_floors(first: RetrainResult) -> None:
    assert first.champion is None and first.champion_version is None
    assert first.candidate["roc_auc"] >= Gate().min_roc_auc  # type: ignore[operator]
    assert "no champion" in " ".join(first.notes)


@pytest.mark.slow
def test_a_genuine_candidate_passes_the_gate_and_becomes_challenger(
    settings: Settings, first: RetrainResult, genuine: tuple[RetrainResult, dict[str, str | None]]
) -> None:
    result, aliases = genuine
    assert result.passed, result.failures
    assert result.champion_version == first.version and result.champion is not None
    assert aliases == {registry.CHAMPION: first.version, registry.CHALLENGER: result.version}
    # The candidate, trained on the later window, beats the older champion on the same holdout rows.
    assert result.candidate["rows"] == result.champion["rows"] == len(result.frames.test)
    assert result.candidate["average_precision"] > result.champion["average_precision"]
    low, high = result.candidate[AP_DIFF + "_ci_low"], result.candidate[AP_DIFF + "_ci_high"]
    assert low <= result.candidate[AP_DIFF] <= high and high >= 0  # not worse beyond doubt: passes
    entries = [e for e in audit.read(settings) if e["versions"].get("candidate") == result.version]
    assert [e["action"] for e in entries] == ["retrain"]
    entry = entries[0]
    assert entry["actor"] == "tests" and entry["reason"] == "scheduled"
    assert entry["numbers"]["gate"]["candidate"]["average_precision"] == result.candidate["average_precision"]
    assert entry["numbers"]["gate"]["champion"]["roc_auc"] == result.champion["roc_auc"]
    assert entry["numbers"]["run_id"] == result.run_id
    promoted = [
        e for e in audit.read(settings) if e["action"] == "promote" and e["versions"]["to"] == result.version
    ]
    assert promoted and promoted[0]["versions"]["alias"] == registry.CHALLENGER
    client = registry.connect(settings)
    tags = client.get_model_version(registry.MODEL_NAME, str(result.version)).tags
    assert tags["gate"] == "passed" and tags["retrain.reason"] == "scheduled"
    run = client.get_run(str(result.run_id))
    assert run.data.tags["gate"] == "passed"
    assert run.data.metrics["gate.champion.average_precision"] == pytest.approx(
        result.champion["average_precision"]
    )
    gate_file = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/gate.json")
    assert gate_file["passed"] is True and gate_file["gate"]["champion"] == result.champion


@pytest.mark.slow
def test_an_impossible_gate_through_the_cli_rejects_registers_nothing_and_is_deterministic(
    settings: Settings, data: Path, genuine: tuple[RetrainResult, dict[str, str | None]]
) -> None:
    """`fraudctl train --retrain` in a subprocess, same window and seed as the genuine candidate,
    demanding an AP gain of 1.0 over the champion: MLflow's validator must say no."""
    result, aliases = genuine
    client = registry.connect(settings)
    versions_before = {v["version"] for v in registry.list_versions(settings)}
    env = {**os.environ, "FRAUD_VAR_DIR": str(settings.var_dir)}
    args = ["train", "--retrain", "--data", str(data), "--now", "2026-01-29", "--train-days", "21"]
    args += ["--gap-days", "7", "--seed", "3", "--min-ap-gain", "1.0", "--reason", "impossible", "--json"]
    done = subprocess.run([*FRAUDCTL, *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 3, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["passed"] is False and out["version"] is None
    assert any("average_precision minimum absolute change check failed" in f for f in out["gate"]["failures"])
    assert {v["version"] for v in registry.list_versions(settings)} == versions_before
    now_aliases = {a: registry.current_version(client, a) for a in aliases}
    assert now_aliases == aliases
    rejected = audit.read(settings)[-1]
    assert rejected["action"] == "retrain_rejected" and rejected["reason"] == "impossible"
    assert rejected["versions"]["candidate"] is None and rejected["numbers"]["run_id"] == out["run_id"]
    assert rejected["numbers"]["gate"]["failures"] == out["gate"]["failures"]
    assert client.get_run(out["run_id"]).data.tags["gate"] == "failed"  # the evidence is kept
    # Same seed, same window, another process: the same model, score for score.
    assert out["gate"]["candidate"] == result.candidate
    child = client.search_runs(
        [client.get_run(out["run_id"]).info.experiment_id],
        f"tags.mlflow.parentRunId = '{out['run_id']}'",
    )[0]
    scores = pd.read_parquet(
        client.download_artifacts(child.info.run_id, "predictions/test_predictions.parquet")
    )
    np.testing.assert_array_equal(scores["score"].to_numpy(), result.holdout_scores)


@pytest.mark.slow
def test_the_drill_bad_challenger_fails_the_gate_yet_is_made_challenger(
    settings: Settings, data: Path, first: RetrainResult, genuine: tuple[RetrainResult, dict[str, str | None]]
) -> None:
    bad = train_bad_challenger(
        settings, NOW, data_dir=data, train_days=TRAIN_DAYS, gap_days=GAP_DAYS, seed=SEED
    )
    assert not bad.gated and not bad.passed
    assert any("roc_auc" in f for f in bad.failures) and bad.candidate["roc_auc"] < 0.7
    assert bad.candidate["average_precision"] < 3 * bad.candidate["fraud_rate"]  # nothing learned
    client = registry.connect(settings)
    assert registry.current_version(client, registry.CHALLENGER) == bad.version
    assert registry.current_version(client, registry.CHAMPION) == first.version  # untouched
    tags = client.get_model_version(registry.MODEL_NAME, str(bad.version)).tags
    assert tags["drill"] == "shuffled_labels" and tags["gate"] == "skipped (drill)"
    assert audit.read(settings)[-1]["action"] == "promote"  # no `retrain` entry for the drill


def test_gate_semantics_through_mlflow_validator() -> None:
    """The thresholds as MLflow's validator applies them (no training needed)."""

    def candidate(ap: float, roc_auc: float, interval: tuple[float, float]) -> dict[str, float]:
        low, high = interval
        differences = {AP_DIFF: ap - 0.30, AP_DIFF + "_ci_low": low, AP_DIFF + "_ci_high": high}
        roc = {"roc_auc_diff_vs_champion" + end: 0.0 for end in ("", "_ci_low", "_ci_high")}
        return {"average_precision": ap, "roc_auc": roc_auc, **differences, **roc}

    champion = {"average_precision": 0.30, "roc_auc": 0.90}
    gate = Gate(min_roc_auc=0.8, max_ap_drop=0.0)
    # A lower AP whose interval still reaches 0 is not worse beyond doubt: it passes.
    assert check_gate(gate, candidate(0.20, 0.85, (-0.25, 0.04)), champion) == []
    failures = check_gate(gate, candidate(0.20, 0.85, (-0.25, -0.01)), champion)
    assert len(failures) == 1 and AP_DIFF + "_ci_high value threshold check failed" in failures[0]
    assert check_gate(Gate(max_ap_drop=0.02), candidate(0.20, 0.85, (-0.25, -0.01)), champion) == []
    failures = check_gate(gate, candidate(0.50, 0.79, (0.1, 0.3)), champion)
    assert len(failures) == 1 and "roc_auc value threshold check failed" in failures[0]
    # A required gain is MLflow's own comparison with the baseline (min_absolute_change).
    assert check_gate(Gate(None, None, 0.01), candidate(0.305, 0.9, (0, 0)), champion)
    assert check_gate(Gate(None, None, 0.01), candidate(0.32, 0.9, (0, 0)), champion) == []
    # Without a champion only the floors count.
    assert check_gate(gate, {"average_precision": 0.01, "roc_auc": 0.81}, None) == []


def test_the_cli_defaults_are_the_gate_defaults() -> None:
    parameters = inspect.signature(train_module.cli).parameters
    default = Gate()
    assert parameters["min_roc_auc"].default == default.min_roc_auc
    assert parameters["max_ap_drop"].default == default.max_ap_drop
    assert parameters["min_ap_gain"].default == default.min_ap_gain


def test_a_training_time_moves_the_label_cutoff_and_may_not_precede_the_test_end() -> None:
    from pipelines.train_windows import choose_windows

    first, last = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-02-04 12:00", tz="UTC")
    windows = choose_windows(
        first,
        last,
        NOW - pd.Timedelta(days=21),
        NOW - pd.Timedelta(days=7),
        0,
        NOW - pd.Timedelta(days=7),
        NOW,
        trained_at=NOW,
    )
    assert windows.label_cutoff == NOW and windows.as_dict()["trained_at"] == NOW.isoformat()
    assert choose_windows(first, last).label_cutoff == choose_windows(first, last).test_start  # backtest
    with pytest.raises(ValueError, match="after the training time"):
        choose_windows(first, last, test_end=NOW, trained_at=NOW - pd.Timedelta(hours=1))
