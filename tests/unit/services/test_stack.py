"""`fraudctl up` in the compose profile writes a `.env` with a generated admin token (once)."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.settings import PROJECT_ROOT, Settings
from services.stack import ensure_env_file


def test_a_generated_token_is_written_once_and_the_compose_profile_accepts_it(tmp_path: Path) -> None:
    shutil.copy(PROJECT_ROOT / ".env.example", tmp_path / ".env.example")
    env = tmp_path / ".env"
    assert ensure_env_file(env)
    token = next(
        line.split("=", 1)[1]
        for line in env.read_text().splitlines()
        if line.startswith("FRAUD_ADMIN_TOKEN=")
    )
    assert len(token) >= 32
    assert oct(env.stat().st_mode & 0o777) == "0o600"  # a secret: the owner's only
    assert not ensure_env_file(env) and token in env.read_text()  # never overwritten
    Settings(profile="compose", var_dir=tmp_path, admin_token=token)  # accepted
