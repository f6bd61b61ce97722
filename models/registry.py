"""The MLflow model registry of `fraud-detector`: versions, aliases, promote, rollback, load.

Aliases, not the deprecated stages: ``champion`` serves decisions, ``challenger`` runs
beside it. Every alias move (promote, rollback, the demo's first promotion) is appended to
the registered model's ``alias_log`` tag — who, why, when, from which version to which —
and ``rollback`` replays that log to find the version that held ``champion`` before.

`load_version` is what serving calls: the ONNX bytes and the metadata stored with the
version, through MLflow only (no torch, no LightGBM, no training code).
"""

from __future__ import annotations

import getpass
import json
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

MODEL_NAME = "fraud-detector"
EXPERIMENT = "fraud-detector-training"
CHAMPION, CHALLENGER = "champion", "challenger"
ALIAS_LOG_TAG = "alias_log"
ALIAS_LOG_KEEP = 25  # entries kept in the tag (MLflow caps tag values at a few kB)
METADATA_FILE = "metadata.json"  # inside the registered ONNX model's extra_files/
MODEL_CARD_FILE = "model_card.md"
REFERENCE_SAMPLE_FILE = "reference_sample.parquet"


class RegistryError(ValueError):
    """A registry request that cannot be done (unknown version, nothing to roll back to)."""


def connect(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking URI (embedded: SQLite under var/)."""
    # MLflow draws a tqdm bar for every artifact download; fraudctl has its own progress.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # table creation etc. at INFO
    # With a tracking server, MLflow prints "View run ... at: URL" to stdout at every run's end.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Its SQLAlchemy store, on first import, uses a loader SQLAlchemy 2.1 deprecates: MLflow's to
    # fix. Set here, just before that import: some libraries reset the filters on their way.
    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
    import mlflow
    from mlflow import MlflowClient

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def experiment_id(settings: Settings, name: str = EXPERIMENT) -> str:
    """An experiment (training by default); in the embedded profile its artifacts live under
    var/mlartifacts (MLflow's own default would be ./mlruns in the working directory)."""
    client = connect(settings)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if settings.profile == "embedded":
        location = (settings.var_dir / "mlartifacts").resolve().as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def _version(client: MlflowClient, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(MODEL_NAME, str(version))
    except MlflowException:
        known = ", ".join(sorted((str(v.version) for v in _versions(client)), key=int)) or "none"
        raise RegistryError(
            f"unknown version {version} of {MODEL_NAME} (registered versions: {known})"
        ) from None


def _versions(client: MlflowClient) -> list[Any]:
    return list(client.search_model_versions(f"name='{MODEL_NAME}'"))


def alias_log(client: MlflowClient) -> list[dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(MODEL_NAME)
    except MlflowException:
        return []
    return list(json.loads(model.tags.get(ALIAS_LOG_TAG, "[]")))


def _record(client: MlflowClient, entry: dict[str, Any]) -> None:
    log = [*alias_log(client), entry][-ALIAS_LOG_KEEP:]
    client.set_registered_model_tag(MODEL_NAME, ALIAS_LOG_TAG, json.dumps(log, separators=(",", ":")))


def _audit(settings: Settings, entry: dict[str, Any]) -> None:
    """Alias moves also go to the one audit trail, beside the monitor's own actions."""
    from monitoring import audit

    audit.record(
        settings,
        entry["action"],
        entry["why"],
        actor=entry["by"],
        versions={"alias": entry["alias"], "from": entry["from"], "to": entry["to"]},
        at=datetime.fromisoformat(entry["at"]),
    )


def current_version(client: MlflowClient, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def promote(
    settings: Settings, version: str, alias: str = CHAMPION, reason: str = "", by: str | None = None
) -> dict[str, Any]:
    """Point ``alias`` at ``version`` and record the move. Returns the log entry."""
    client = connect(settings)
    _version(client, version)
    entry = {
        "action": "promote",
        "alias": alias,
        "from": current_version(client, alias),
        "to": str(version),
        "by": by or getpass.getuser(),
        "why": reason,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    client.set_registered_model_alias(MODEL_NAME, alias, str(version))
    _record(client, entry)
    _audit(settings, entry)
    return entry


def champion_history(log: list[dict[str, Any]], alias: str = CHAMPION) -> list[str]:
    """The stack of versions that held ``alias``: a promote pushes, a rollback pops."""
    stack: list[str] = []
    for entry in log:
        if entry["alias"] != alias:
            continue
        if entry["action"] == "promote" and (not stack or stack[-1] != entry["to"]):
            stack.append(entry["to"])
        elif entry["action"] == "rollback" and stack:
            stack.pop()
    return stack


def rollback(settings: Settings, reason: str, alias: str = CHAMPION, by: str | None = None) -> dict[str, Any]:
    """Move ``alias`` back to the version that held it before the current one; record it."""
    client = connect(settings)
    current = current_version(client, alias)
    history = champion_history(alias_log(client), alias)
    if current is None:
        raise RegistryError(f"no version of {MODEL_NAME} holds the alias {alias!r}; nothing to roll back")
    if len(history) < 2 or history[-1] != current:
        raise RegistryError(
            f"{alias!r} (version {current}) has no earlier holder recorded; nothing to roll back to"
        )
    previous = history[-2]
    entry = {
        "action": "rollback",
        "alias": alias,
        "from": current,
        "to": previous,
        "by": by or getpass.getuser(),
        "why": reason,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    client.set_registered_model_alias(MODEL_NAME, alias, previous)
    _record(client, entry)
    _audit(settings, entry)
    return entry


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version with its aliases, model type, creation time and key test metrics (from tags)."""
    client = connect(settings)
    versions = sorted(_versions(client), key=lambda v: int(v.version))
    # Trap: search_model_versions leaves each version's aliases empty; the model holds them.
    aliases: dict[str, list[str]] = {}
    if versions:
        for alias, number in client.get_registered_model(MODEL_NAME).aliases.items():
            aliases.setdefault(str(number), []).append(alias)
    rows = []
    for v in versions:
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "model_type": v.tags.get("model_type", "?"),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime(
                    "%Y-%m-%d %H:%M"
                ),
                "run_id": v.run_id,
                **{k.removeprefix("test."): float(val) for k, val in v.tags.items() if k.startswith("test.")},
            }
        )
    return rows


@dataclass
class LoadedModel:
    """What serving needs from a registered version."""

    version: str
    onnx_bytes: bytes
    metadata: dict[str, Any]
    folder: Path  # the downloaded model: model.onnx, MLmodel, extra_files/


def load_version(settings: Settings, alias: str = CHAMPION, version: str | None = None) -> LoadedModel:
    """Download a version (by alias, or by number) and read its ONNX bytes and metadata."""
    import mlflow
    import onnx

    client = connect(settings)
    if version is None:
        number = current_version(client, alias)
        if number is None:
            raise RegistryError(
                f"no version of {MODEL_NAME} holds the alias {alias!r}: run `fraudctl train` first"
            )
    else:
        number = str(_version(client, version).version)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{number}"))
    onnx_files = sorted(folder.glob("*.onnx"))
    if not onnx_files:
        raise RegistryError(f"version {number} of {MODEL_NAME} holds no ONNX file")
    metadata = json.loads((folder / "extra_files" / METADATA_FILE).read_text())
    # onnx.load pulls in tensors stored beside the graph (MLflow's default for a time);
    # ONNX Runtime refuses external data for a model given as bytes.
    onnx_bytes = onnx.load_model(str(onnx_files[0])).SerializeToString()
    return LoadedModel(number, onnx_bytes, metadata, folder)


def version_test_predictions(
    settings: Settings, alias: str = CHAMPION
) -> tuple[str, pd.DataFrame, dict[str, Any]]:
    """The test-window predictions of the run that trained the version holding `alias`.

    Returns:
        The version, its predictions (transaction_id, score, label: calibrated scores of the
        training vectors, as training computed them) and its decision thresholds.

    Raises:
        RegistryError: No version holds the alias, or its run kept no predictions.
    """
    import mlflow
    import pandas as pd

    client = connect(settings)
    number = current_version(client, alias)
    if number is None:
        raise RegistryError(f"no version of {MODEL_NAME} holds the alias {alias!r}")
    run_id = _version(client, number).run_id
    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="predictions/test_predictions.parquet"
        )
    except Exception as error:  # MLflow raises its own or OSError, by store
        raise RegistryError(f"version {number}'s run {run_id} kept no test predictions: {error}") from None
    metadata = json.loads(
        Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{number}"))
        .joinpath("extra_files", METADATA_FILE)
        .read_text()
    )
    return number, pd.read_parquet(path), dict(metadata["thresholds"])
