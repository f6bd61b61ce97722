"""MLflow side of `fraudctl train`: one run per training, a nested run per model, registration.

The parent run holds what is common (data fingerprint, windows, cost model, baselines,
the comparison table); each model's nested run holds its metrics, plots, test
predictions, the native model and the ONNX model — registered as a version of
`fraud-detector` that carries the feature list, calibration, thresholds, training
window, drift reference sample and model card (in its `extra_files/`).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.features import MODEL_FEATURES
from core.settings import Settings
from models import model_card, plots
from models.evaluation import HEADLINE, flat_breakdowns, metrics_table
from models.metrics import average_precision
from models.registry import (
    METADATA_FILE,
    MODEL_CARD_FILE,
    MODEL_NAME,
    REFERENCE_SAMPLE_FILE,
    connect,
    experiment_id,
)

if TYPE_CHECKING:
    from pipelines.train import Candidate, Frames, TrainRequest

REFERENCE_ROWS = 5_000  # the drift monitor's sample of the training distribution
IMPORTANCE_ROWS = 5_000


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}


def permutation_importance(candidate: Candidate, frames: Frames, seed: int) -> np.ndarray:
    """Drop in validation AP when each feature's column is shuffled (one model-agnostic measure)."""
    rng = np.random.default_rng(seed)
    x, y = frames.x("valid"), frames.y("valid")
    if len(x) > IMPORTANCE_ROWS:
        keep = rng.choice(len(x), IMPORTANCE_ROWS, replace=False)
        x, y = x[keep], y[keep]
    predict = candidate.native.predict
    base = average_precision(y, predict(x))
    drops = []
    for column in range(x.shape[1]):
        shuffled = x.copy()
        shuffled[:, column] = rng.permutation(shuffled[:, column])
        drops.append(base - average_precision(y, predict(shuffled)))
    return np.nan_to_num(np.array(drops))


def metadata(candidate: Candidate, frames: Frames, request: TrainRequest) -> dict[str, Any]:
    """What the registered version carries besides the ONNX graph (metadata.json)."""
    return {
        "model_name": MODEL_NAME,
        "model_type": candidate.name,
        "features": list(MODEL_FEATURES),
        "calibration": candidate.calibration,
        "thresholds": candidate.thresholds.as_dict(),
        "cost_model": request.cost.as_dict(),
        "windows": frames.windows.as_dict(),
        "seed": request.seed,
        "data": {"dir": str(Path(request.data_dir).resolve()), "fingerprint": frames.fingerprint},
        "rows": {
            "train": len(frames.train),
            "train_fraud": int(frames.train["label"].sum()),
            "valid": len(frames.valid),
            "valid_fraud": int(frames.valid["label"].sum()),
            "test": len(frames.test),
            "test_fraud": int(frames.test["label"].sum()),
        },
        "metrics": _finite(candidate.metrics),
        "breakdowns": candidate.breakdowns,
        "parity_max_diff": candidate.parity_max_diff,
        "onnx": {"input": "features", "output": "probabilities", "score_column": 1},
    }


def _reference_sample(candidate: Candidate, frames: Frames, seed: int) -> pd.DataFrame:
    """A seeded sample of validation rows with their calibrated scores: the drift reference.

    The validation window, not the whole training window: its days are the latest the model
    was fitted on, the closest to what it meets in serving. The first days of a dataset hold
    histories still filling up (30-day counts, the 28-day merchant rate lagged 7 days), and a
    reference drawn from them reads every later window as drifted (measured in the drills).
    """
    rows = frames.valid.sample(min(REFERENCE_ROWS, len(frames.valid)), random_state=seed)
    from models import calibration

    sample = rows[["transaction_id", "event_time", *MODEL_FEATURES, "label"]].reset_index(drop=True)
    sample["score"] = calibration.apply(
        candidate.calibration, candidate.native.predict(rows[MODEL_FEATURES].to_numpy(np.float32))
    )
    return sample


def _log_native(candidate: Candidate, example: np.ndarray) -> None:
    import mlflow

    if candidate.name == "lightgbm":
        import mlflow.lightgbm

        mlflow.lightgbm.log_model(
            candidate.native.classifier, name="native", pip_requirements=["lightgbm", "scikit-learn"]
        )
    else:
        import mlflow.pytorch

        mlflow.pytorch.log_model(
            candidate.native.module,
            name="native",
            input_example=example,
            pip_requirements=["torch==2.13.0"],
        )
    mlflow.log_params({f"model.{k}": v for k, v in _model_params(candidate).items()})


def _model_params(candidate: Candidate) -> dict[str, Any]:
    native = candidate.native
    if candidate.name == "lightgbm":
        return {**native.effective_params, "best_iteration": native.best_iteration}
    from models import mlp

    return {
        "hidden": mlp.HIDDEN,
        "batch_size": mlp.BATCH_SIZE,
        "learning_rate": mlp.LEARNING_RATE,
        "epochs": native.epochs,
        "patience": mlp.PATIENCE,
    }


def _log_model_run(
    client: Any,
    candidate: Candidate,
    frames: Frames,
    request: TrainRequest,
    comparison: dict[str, dict[str, float]],
    folder: Path,
    register: bool = True,
) -> str | None:
    """Log one model's nested run and register its ONNX model; returns the version number
    (None when ``register`` is off: the run keeps the ONNX model, the registry does not)."""
    import mlflow

    labels, scores = frames.y("test"), candidate.test_scores
    mlflow.log_metrics(_finite(candidate.metrics))
    mlflow.log_metrics(_finite(flat_breakdowns(candidate.breakdowns)))
    mlflow.log_metrics(
        {"fit_seconds": candidate.fit_seconds, "parity_max_diff": candidate.parity_max_diff or 0.0}
    )
    figures = {
        "plots/pr_curve.png": plots.pr_curve(labels, {candidate.name: scores}),
        "plots/calibration_curve.png": plots.reliability(labels, scores),
        "plots/score_histograms.png": plots.score_histograms(labels, scores),
        "plots/feature_importance.png": plots.feature_importance(
            MODEL_FEATURES, permutation_importance(candidate, frames, request.seed)
        ),
    }
    for name, figure in figures.items():
        mlflow.log_figure(figure, name)
        plots.close(figure)
    predictions = folder / "test_predictions.parquet"
    pd.DataFrame(
        {"transaction_id": frames.test["transaction_id"], "score": scores, "label": labels}
    ).to_parquet(predictions, index=False)
    mlflow.log_artifact(str(predictions), "predictions")
    _log_native(candidate, frames.x("test")[:5])

    meta = metadata(candidate, frames, request)
    files = {
        METADATA_FILE: json.dumps(meta, indent=2, default=str),
        MODEL_CARD_FILE: model_card.render(meta, comparison),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    _reference_sample(candidate, frames, request.seed).to_parquet(folder / REFERENCE_SAMPLE_FILE, index=False)
    mlflow.log_artifact(str(folder / MODEL_CARD_FILE))

    assert candidate.onnx_bytes is not None
    example = frames.x("test")[:5]
    from models.runtime import session

    outputs = session(candidate.onnx_bytes).run(["probabilities"], {"features": example})[0]
    # MLflow prints "Successfully registered model ..." / "Created version ..." to stderr; the
    # train step says the same in one line. Errors still raise.
    from mlflow.utils import logging_utils

    logging_utils.disable_logging()
    try:
        info = _log_onnx(candidate, meta, folder, example, outputs, register)
    finally:
        logging_utils.enable_logging()
    if not register:
        return None
    version = str(info.registered_model_version)
    client.update_model_version(MODEL_NAME, version, description=files[MODEL_CARD_FILE])
    tags = {
        "model_type": candidate.name,
        "training_run_id": mlflow.active_run().info.run_id,  # type: ignore[union-attr]
        "data_fingerprint": frames.fingerprint,
        "thresholds": json.dumps(candidate.thresholds.as_dict()),
        **{f"test.{k}": f"{candidate.metrics[k]:.6g}" for k in (*HEADLINE, "savings_vs_rules")},
    }
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    return version


def log_and_register(
    settings: Settings, request: TrainRequest, frames: Frames, candidates: dict[str, Candidate]
) -> dict[str, str]:
    """Log the parent and per-model runs; register every model. Returns {model: version}."""
    return log_runs(settings, request, frames, candidates).versions


@dataclass
class LoggedRuns:
    parent_run_id: str
    run_ids: dict[str, str]  # model name → its nested run
    versions: dict[str, str]  # model name → registered version (empty when not registered)


def log_runs(
    settings: Settings,
    request: TrainRequest,
    frames: Frames,
    candidates: dict[str, Candidate],
    *,
    register: bool = True,
    tags: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> LoggedRuns:
    """`log_and_register`, with its run ids, extra ``tags`` and ``metrics`` on the parent run,
    and ``register=False`` to keep the evidence (runs, ONNX, card) without a registry version:
    what a retraining that failed its promotion gate leaves behind."""
    client = connect(settings)  # first: it sets MLflow's environment before the import
    import mlflow

    mlflow.set_experiment(experiment_id=experiment_id(settings))
    comparison = {name: c.metrics for name, c in candidates.items()}
    versions: dict[str, str] = {}
    run_ids: dict[str, str] = {}
    with mlflow.start_run(run_name="train") as parent, tempfile.TemporaryDirectory(prefix="train-") as tmp:
        mlflow.log_params(
            {
                "data_dir": str(Path(request.data_dir).resolve()),
                "data_fingerprint": frames.fingerprint,
                "seed": request.seed,
                "models": ",".join(request.models),
                "calibration": request.calibration,
                **{f"window.{k}": v for k, v in frames.windows.as_dict().items()},
                **{f"cost.{k}": v for k, v in asdict(request.cost).items()},
            }
        )
        mlflow.set_tag("data_fingerprint", frames.fingerprint)
        mlflow.set_tags(dict(tags or {}))
        mlflow.log_metrics(_finite(dict(metrics or {})))
        for name, candidate in candidates.items():
            if candidate.onnx_bytes is None:  # a baseline: its numbers go on the parent run
                mlflow.log_metrics({f"{name}.{k}": v for k, v in _finite(candidate.metrics).items()})
        table = metrics_table(comparison)
        mlflow.log_text(model_card.table(table), "metrics_table.md")
        mlflow.log_dict(comparison, "metrics.json")
        curves = plots.pr_curve(frames.y("test"), {n: c.test_scores for n, c in candidates.items()})
        mlflow.log_figure(curves, "plots/pr_curves.png")
        plots.close(curves)
        for name, candidate in candidates.items():
            if candidate.onnx_bytes is None:
                continue
            folder = Path(tmp) / name
            folder.mkdir()
            with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent.info.run_id) as run:
                mlflow.set_tag("data_fingerprint", frames.fingerprint)
                run_ids[name] = run.info.run_id
                version = _log_model_run(client, candidate, frames, request, comparison, folder, register)
                if version is not None:
                    versions[name] = version
    return LoggedRuns(parent.info.run_id, run_ids, versions)


def _log_onnx(
    candidate: Candidate,
    meta: dict[str, Any],
    folder: Path,
    example: Any,
    outputs: Any,
    register: bool = True,
) -> Any:
    """Log the ONNX model with its extra files and (``register``) register it as a new version."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    assert candidate.onnx_bytes is not None
    return mlflow.onnx.log_model(
        onnx.load_from_string(candidate.onnx_bytes),
        name="onnx",
        signature=infer_signature(example, outputs),
        input_example=example,
        registered_model_name=MODEL_NAME if register else None,
        metadata={k: meta[k] for k in ("model_type", "features", "calibration", "thresholds", "windows")},
        extra_files=[str(folder / name) for name in (METADATA_FILE, MODEL_CARD_FILE, REFERENCE_SAMPLE_FILE)],
        pip_requirements=["onnxruntime"],
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,  # one self-contained file: what serving reads
    )
