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
# The embedded profile's admin token: fine on a laptop, refused by the compose profile.
DEV_ADMIN_TOKEN = "dev-admin-token"

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

    # Scoring service (issue: scoring service). Canary share and kill switch are the values a
    # process starts with; `/admin/canary` and `/admin/kill-switch` change them while it runs.
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    admin_token: str = Field(default=DEV_ADMIN_TOKEN, min_length=8, description="Bearer token of /admin/*.")
    canary_percent: float = Field(default=0.0, ge=0, le=100)
    kill_switch: bool = False
    feature_timeout_ms: float = Field(default=5.0, gt=0, description="Time budget of one online lookup.")
    breaker_failures: int = Field(
        default=5, ge=1, description="Failed lookups in a row that open the breaker."
    )
    breaker_reset_seconds: float = Field(default=2.0, gt=0, description="Open breaker: wait before a probe.")
    registry_poll_seconds: float = Field(default=10.0, ge=0, description="Alias polling; 0 turns it off.")
    controls_poll_seconds: float = Field(
        default=0.25, gt=0, le=1, description="Re-read of the shared canary share and kill switch."
    )
    max_body_bytes: int = 16 * 1024
    prediction_log: bool = True
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="Disk cap of the spool.")
    # Rules that decide on their own, whatever the model says.
    amount_hard_limit: float = Field(default=10_000.0, gt=0)
    blocked_cards: list[str] = Field(default_factory=list)  # env: FRAUD_BLOCKED_CARDS='["c_1"]'
    blocked_devices: list[str] = Field(default_factory=list)
    impossible_travel_seconds: int = Field(default=3600, ge=0)

    # Monitor (`fraudctl monitor`): windows are in event time, so a replay at a speed-up
    # is monitored as the real days would be.
    monitor_port: int = 9109
    stream_metrics_port: int = 9108  # `fraudctl up` (embedded) starts the stream processor on it
    prometheus_port: int = 9090  # `fraudctl up` (embedded) starts Prometheus on it, if installed
    drift_window_hours: float = Field(default=24.0, gt=0, description="Tumbling drift window, event time.")
    drift_window_decisions: int = Field(default=5_000, ge=100, description="The 'last M decisions' window.")
    drift_windows_required: int = Field(default=3, ge=1, description="Drifted windows in a row for an alarm.")
    drift_min_rows: int = Field(default=500, ge=50, description="A smaller window is skipped.")
    monitor_retention_days: float = Field(default=45.0, gt=0, description="Predictions kept in state.")
    maturity_days: float = Field(default=30.0, gt=0, description="Age at which a decision day is matured.")
    retrain_train_days: float = Field(default=28.0, gt=0, description="Retraining: days of training data.")
    retrain_gap_days: float = Field(default=7.0, ge=0, description="Retraining: holdout = one label delay.")
    retrain_after_drift_days: float = Field(default=1.0, ge=0, description="Drifted days to train on.")
    retrain_every_days: float | None = Field(
        default=None, gt=0, description="Retrain on this schedule too (event time); None: on alarms only."
    )
    missed_fraud_days: int = Field(
        default=3, ge=1, description="Matured days pooled to judge fraud the scores did not expect."
    )
    skew_sample_rows: int = Field(default=300, ge=0, description="Rows re-joined offline per skew check.")
    # Every scoring process the monitor acts on (canary share, reload) through its admin API.
    scoring_urls: list[str] = Field(default_factory=list)  # default: http://serve_host:serve_port

    # Simulator defaults used by `fraudctl demo`.
    # 42 days: chargebacks take ~10 days (median), so training needs weeks of labelled history.
    demo_days: int = 42
    demo_cards: int = 2_000
    demo_merchants: int = 300
    demo_seed: int = 7

    @model_validator(mode="after")
    def _fill_profile_defaults(self) -> Settings:
        if self.profile == "compose" and self.admin_token == DEV_ADMIN_TOKEN:
            # The full-stack template's placeholder-secret check: a stack reachable from a
            # network must not accept the token printed in this repository.
            raise ValueError(
                "FRAUD_ADMIN_TOKEN is the built-in development token, refused in the compose "
                "profile: set your own (`.env` from `.env.example` holds a generated one; "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        self.var_dir = self.var_dir.expanduser().resolve()
        for name, default in _PROFILE_DEFAULTS[self.profile].items():
            if not getattr(self, name):
                setattr(self, name, default)
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{self.var_dir / 'mlflow.db'}"
        if self.data_dir is None:
            self.data_dir = self.var_dir / "data"
        if not self.scoring_urls:
            self.scoring_urls = [f"http://{self.serve_host}:{self.serve_port}"]
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
    def spool_dir(self) -> Path:
        """Predictions waiting for the broker (the scoring service's prediction log).

        One per scoring process, by host and port: two replicas must never append to, or
        replay, one spool. A replica restarted with the same host name and port (a compose
        container restarted, `fraudctl serve` again on its port) finds its own backlog.
        """
        import socket

        return self.var_dir / "spool" / "predictions" / f"{socket.gethostname()}-{self.serve_port}"

    @property
    def monitor_dir(self) -> Path:
        """The monitor's checkpoint (state + offsets) and its Evidently reports."""
        return self.var_dir / "monitor"

    @property
    def reports_dir(self) -> Path:
        return self.var_dir / "reports"

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
