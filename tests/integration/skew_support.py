"""The training side of the skew tests: what training computed for every transaction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core.settings import Settings
from pipelines.train import TrainRequest, prepare_frames
from tests.integration.scoring_support import trained_registry


@dataclass(frozen=True, repr=False)  # a failure shows the assertion, not frames
class TrainingSide:
    settings: Settings  # where the models were trained and registered (its MLflow serves them)
    data_dir: Path
    frame: pd.DataFrame  # the training frames (train + valid + test), indexed by transaction_id


def train_and_rebuild_frames(settings: Settings) -> TrainingSide:
    """One dataset, backfilled into its own Feast store, trained and registered (champion
    LightGBM, challenger MLP); then the training frames rebuilt exactly as training builds
    them (`prepare_frames`: Feast's point-in-time join, then `model_vector`)."""
    trained_registry(settings)
    data = settings.var_dir / "data"
    frames = prepare_frames(settings, TrainRequest(data_dir=data, seed=3))
    frame = pd.concat([frames.train, frames.valid, frames.test], ignore_index=True)
    assert frame["transaction_id"].is_unique
    return TrainingSide(settings, data, frame.set_index("transaction_id"))
