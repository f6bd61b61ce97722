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


def test_the_local_prometheus_config_is_the_compose_one_aimed_at_local_processes(tmp_path: Path) -> None:
    import subprocess

    import pytest
    import yaml

    from services.stack import local_prometheus_config

    targets = {"scoring": ["127.0.0.1:8000"], "stream": ["127.0.0.1:9108", "127.0.0.1:9118"],
               "monitor": ["127.0.0.1:9109"]}  # fmt: skip
    config = yaml.safe_load(local_prometheus_config(targets))
    compose = yaml.safe_load((PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        job["job_name"] for job in compose["scrape_configs"]
    ]
    assert {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    } == targets
    assert all(Path(rule).is_absolute() and Path(rule).exists() for rule in config["rule_files"])
    with pytest.raises(ValueError, match="scrapes"):
        local_prometheus_config({"scoring": ["127.0.0.1:8000"]})
    path = tmp_path / "prometheus.yml"
    path.write_text(local_prometheus_config(targets))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (.ci/run installs it)")
    checked = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
