"""Shared fixtures: a small simulated dataset, and settings whose state lives in a temp folder."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core.settings import Settings
from pipelines import simulate

SMALL = simulate.SimulationParams(days=12, cards=300, merchants=40, seed=11, fraud_rate=0.02)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 simulated days, 300 cards, 2% fraud: every scenario present, a few thousand rows."""
    out = tmp_path_factory.mktemp("data") / "small"
    simulate.run(out, SMALL)
    return out


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    return Settings(profile="embedded", var_dir=tmp_path / "var")


@pytest.fixture
def redis_settings(tmp_path: Path) -> Settings:
    """Compose profile against this machine's Redis; a fresh Feast project keeps runs apart."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it; see /work/.library/env)")
    return Settings(
        profile="compose",
        var_dir=tmp_path / "var",
        redis_url="127.0.0.1:6379",
        feast_project=f"fraud_test_{uuid.uuid4().hex[:8]}",
        admin_token="test-admin-token",
    )
