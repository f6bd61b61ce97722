"""The one settings object: profile defaults, and the compose profile's refusal of the dev token."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import DEV_ADMIN_TOKEN, Settings


def test_the_compose_profile_refuses_the_built_in_admin_token(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="FRAUD_ADMIN_TOKEN is the built-in development token"):
        Settings(profile="compose", var_dir=tmp_path)
    settings = Settings(profile="compose", var_dir=tmp_path, admin_token="a-generated-secret")
    assert (settings.kafka_bootstrap, settings.redis_url) == ("kafka:9092", "redis:6379")


def test_the_embedded_profile_keeps_its_dev_default(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    assert settings.admin_token == DEV_ADMIN_TOKEN
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_each_scoring_process_has_its_own_spool(tmp_path: Path) -> None:
    one, other = Settings(var_dir=tmp_path, serve_port=8000), Settings(var_dir=tmp_path, serve_port=8001)
    assert one.spool_dir != other.spool_dir
    assert one.spool_dir.parent == other.spool_dir.parent == tmp_path.resolve() / "spool" / "predictions"
