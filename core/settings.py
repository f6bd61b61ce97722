"""The one settings object: every process reads its configuration from here.

Values come from environment variables prefixed ``FRAUD_`` (``FRAUD_PROFILE=compose``,
``FRAUD_VAR_DIR=/tmp/x``) or a ``.env`` file. The profile picks defaults for the
addresses of the parts (broker, online store, MLflow); any of them can still be set
on its own. Importing this module creates nothing and connects to nothing.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]

Profile = Literal["embedded", "compose"]

# Defaults that differ between the two profiles (DESIGN.md section 3).
_PROFILE_DEFAULTS: dict[str, dict[str, str]] = {
    "embedded": {
        "kafka_bootstrap": "127.0.0.1:9092",
        "redis_url": "127.0.0.1:6379",
        "mlflow_tracking_uri": "",  # filled from var_dir below
    },
    "compose": {
        "kafka_bootstrap": "kafka:9092",
        "redis_url": "redis:6379",
        "mlflow_tracking_uri": "http://mlflow:5000",
    },
}


class Settings(BaseSettings):
    """Configuration of every fraudctl stage, for both profiles."""

    model_config = SettingsConfigDict(env_prefix="FRAUD_", env_file=".env", extra="ignore")

    profile: Profile = "embedded"
    var_dir: Path = Field(default=PROJECT_ROOT / "var", description="All mutable state lives here.")

    # Data written by `fraudctl simulate` when no --out is given (the demo's data).
    data_dir: Path | None = None

    # Feast
    feast_project: str = "fraud"
    redis_url: str = ""

    # Kafka (issue: streaming)
    kafka_bootstrap: str = ""
    transactions_partitions: int = 4

    # MLflow (issue: training)
    mlflow_tracking_uri: str = ""

    # Simulator defaults used by `fraudctl demo`.
    # 42 days: chargebacks take ~10 days (median), so training needs weeks of labelled history.
    demo_days: int = 42
    demo_cards: int = 2_000
    demo_merchants: int = 300
    demo_seed: int = 7

    @model_validator(mode="after")
    def _fill_profile_defaults(self) -> Settings:
        self.var_dir = self.var_dir.expanduser().resolve()
        for name, default in _PROFILE_DEFAULTS[self.profile].items():
            if not getattr(self, name):
                setattr(self, name, default)
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.var_dir / 'mlflow.db'}"
        if self.data_dir is None:
            self.data_dir = self.var_dir / "data"
        return self

    # Paths derived from var_dir, so that `fraudctl clean` has one folder to remove.
    @property
    def feast_dir(self) -> Path:
        return self.var_dir / "feast"

    @property
    def offline_dir(self) -> Path:
        """Parquet files of the Feast offline store (one per feature view)."""
        return self.feast_dir / "offline"

    @property
    def feature_repo_dir(self) -> Path:
        return PROJECT_ROOT / "feature_repo"

    @property
    def demo_data_dir(self) -> Path:
        assert self.data_dir is not None  # set by the validator
        return self.data_dir


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own ``Settings(...)`` instead."""
    return Settings()
