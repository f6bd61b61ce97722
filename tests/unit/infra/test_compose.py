"""docker-compose.yml, the Dockerfile and the Prometheus config, checked without a Docker engine.

The compose file is validated against the compose-spec JSON schema (check-jsonschema ships
it: Debian's docker-compose 1.29 rejects current keys such as top-level `name`), then for
what the schema cannot know: dependencies that exist and can be waited on, a healthcheck on
every long-running service, pinned images, build targets the Dockerfile has, and FRAUD_*
variables that are real settings.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
ONE_SHOT = "no"  # `restart: "no"`: a job that runs to completion (init)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_the_compose_file_validates_against_the_compose_spec_schema() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    run = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_dependency_exists_names_a_condition_and_can_be_waited_on(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition per service"
        for target, how in depends.items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            condition = how.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), (name, target)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health: it has none"
            else:
                assert services[target].get("restart") == ONE_SHOT, f"{target} is waited on as a one-shot"


def test_every_service_has_a_healthcheck_or_is_a_one_shot(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "healthcheck" in service or service.get("restart") == ONE_SHOT, name


def test_every_image_is_pinned_and_every_build_target_exists(services: dict[str, dict[str, Any]]) -> None:
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE.read_text(), re.MULTILINE))
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
        if "build" in service:
            assert service["build"]["target"] in targets, f"{name}: no stage {service['build']['target']}"


def test_every_fraud_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    fields = {f"FRAUD_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        for variable in service.get("environment", {}):
            if variable.startswith("FRAUD_"):
                assert variable in fields, f"{name}: {variable} is no setting of core/settings.py"
    example = (ROOT / ".env.example").read_text()
    for variable in re.findall(r"^(FRAUD_\w+)=", example, re.MULTILINE):
        assert variable in fields, f".env.example: {variable}"


def test_the_app_services_run_fraudctl_verbs_that_exist(services: dict[str, dict[str, Any]]) -> None:
    from core.cli import app

    verbs = {command.name for command in app.registered_commands} | {g.name for g in app.registered_groups}
    for name in ("stream", "scoring", "monitor"):
        assert services[name]["command"][0] in verbs, name


def test_the_job_scripts_parse() -> None:
    for script in ("init.sh", "gateway.sh"):
        run = subprocess.run(["sh", "-n", str(ROOT / "infra" / script)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


def test_promtool_accepts_the_prometheus_config_and_every_alerted_job_is_scraped() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (.ci/run installs it)")
    run = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    jobs = {job["job_name"] for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    alerted = set(re.findall(r'job="(\w+)"', (PROMETHEUS.parent / "alerts.yml").read_text()))
    assert alerted <= jobs, alerted - jobs
