"""Fixtures shared by integration modules."""

from __future__ import annotations

import pytest

from core.settings import Settings
from tests.integration.skew_support import TrainingSide, train_and_rebuild_frames


@pytest.fixture(scope="session")
def training_side(tmp_path_factory: pytest.TempPathFactory) -> TrainingSide:
    """Trained once per session: both skew modules compare the service with it (~45 s)."""
    settings = Settings(profile="embedded", var_dir=tmp_path_factory.mktemp("skew-train") / "var")
    return train_and_rebuild_frames(settings)
