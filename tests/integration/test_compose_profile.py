"""The compose profile run for real, without Docker: the compose services' own command lines.

This machine has a Docker client but no engine. So the test starts what docker-compose.yml
starts, with the addresses of this machine: the `mlflow` service's command (MLflow's
tracking server on a real PostgreSQL database, artifacts served by it), the `init` job's
script (`infra/init.sh`: simulate, backfill into the real Redis, train and register through
the server), and the `scoring` service's command (`fraudctl serve`), with the Tansu broker in
place of Apache Kafka. A transaction is then scored with features from Redis and the model
from the MLflow server, and its prediction reaches the `predictions` topic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from core.dataset import read_transactions
from core.events import PREDICTIONS_TOPIC
from core.settings import Settings
from pipelines import kafka_clients
from pipelines.broker import EmbeddedBroker
from services.serve import free_port
from tests.integration.scoring_support import as_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
BIN = Path(sys.executable).parent


@pytest.fixture
def postgres_database() -> Iterator[str]:
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"mlflow_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it): {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def _mlflow_command(backend: str, artifacts: Path, port: int) -> list[str]:
    """The compose `mlflow` service's command, with this machine's addresses."""
    replaced = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--backend-store-uri": backend,
        "--artifacts-destination": str(artifacts),
    }
    command = []
    for argument in SERVICES["mlflow"]["command"]:
        flag, _, value = argument.partition("=")
        command.append(f"{flag}={replaced[flag]}" if flag in replaced else argument)
    return [str(BIN / SERVICES["mlflow"]["entrypoint"][0]), *command]


def _wait(check, timeout_s: float, what: str, process: subprocess.Popen, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"{what} exited: {log.read_text()[-3000:]}"
        try:
            if check():
                return
        except Exception:  # noqa: BLE001, S110 - not up yet
            pass
        assert time.monotonic() < deadline, f"{what} not up in {timeout_s:.0f} s: {log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_the_compose_services_score_with_redis_features_and_the_mlflow_servers_model(
    tmp_path: Path, postgres_database: str
) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    mlflow_port, scoring_port = free_port(), free_port()
    var, logs = tmp_path / "var", tmp_path / "logs"
    logs.mkdir()
    processes: list[subprocess.Popen] = []

    def spawn(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = logs / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        processes.append(process)
        return process

    base = Settings(var_dir=var)  # only for the broker's own files
    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker:
        env = os.environ | {
            **{
                k: str(v) for k, v in SERVICES["scoring"]["environment"].items() if not str(v).startswith("$")
            },
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "FRAUD_VAR_DIR": str(var),
            "FRAUD_KAFKA_BOOTSTRAP": broker.settings.kafka_bootstrap,
            "FRAUD_REDIS_URL": "127.0.0.1:6379",
            "FRAUD_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "FRAUD_FEAST_PROJECT": f"fraud_compose_{uuid.uuid4().hex[:8]}",
            "FRAUD_ADMIN_TOKEN": "test-compose-token",
            "FRAUD_DEMO_DAYS": "28",
            "FRAUD_DEMO_CARDS": "400",
            "IMPORT_DIR": str(tmp_path / "import"),  # empty: the init job simulates
        }
        assert env["FRAUD_PROFILE"] == "compose"
        try:
            server = spawn(
                "mlflow", _mlflow_command(postgres_database, tmp_path / "artifacts", mlflow_port), env
            )
            health = SERVICES["mlflow"]["healthcheck"]["test"][-1].replace(
                "mlflow:5000", f"127.0.0.1:{mlflow_port}"
            )
            _wait(
                lambda: subprocess.run([sys.executable, "-c", health], timeout=30).returncode == 0,
                180,
                "the MLflow server",
                server,
                logs / "mlflow.log",
            )
            # The apps' Host header (mlflow:5000) is allowed, one the allowed hosts do not name
            # is refused: the security middleware is on, and configured.
            search = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1"
            assert httpx.get(search, headers={"host": "mlflow:5000"}).status_code == 200
            assert httpx.get(search, headers={"host": "elsewhere.example:5000"}).status_code == 403

            init = subprocess.run(
                ["sh", str(ROOT / SERVICES["init"]["entrypoint"][-1].removeprefix("/app/"))],
                env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
            )  # fmt: skip
            assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
            again = subprocess.run(
                ["sh", str(ROOT / "infra" / "init.sh")], env=env, capture_output=True, text=True, timeout=300
            )
            assert again.returncode == 0, again.stderr[-3000:]
            assert (
                "a champion is registered" in again.stdout and "features already backfilled" in again.stdout
            )

            command = SERVICES["scoring"]["command"]
            command = [
                str(BIN / "fraudctl"),
                *command[:-4],
                "--host",
                "127.0.0.1",
                "--port",
                str(scoring_port),
            ]
            scoring = spawn("scoring", command, env)
            url = f"http://127.0.0.1:{scoring_port}"
            _wait(
                lambda: httpx.get(f"{url}/readyz").status_code == 200,
                180,
                "scoring",
                scoring,
                logs / "scoring.log",
            )

            model = httpx.get(f"{url}/v1/model").json()
            assert model["controls_shared_in"].startswith("redis ")
            transaction = read_transactions(var / "data").drop(columns=["scenario"]).iloc[-1].to_dict()
            reply = httpx.post(f"{url}/v1/score", json=as_body(transaction), timeout=10).json()
            assert reply["served_by"] == "champion"
            assert reply["model_version"] == model["champion"]["version"]
            assert "card" in reply["stored_features"], reply  # read from Redis

            settings = broker.settings.model_copy(update={"kafka_bootstrap": env["FRAUD_KAFKA_BOOTSTRAP"]})
            consumer = kafka_clients.consumer(
                settings, f"compose-test-{uuid.uuid4().hex[:6]}", [PREDICTIONS_TOPIC]
            )
            try:
                deadline, seen = time.monotonic() + 60, set()
                while transaction["transaction_id"] not in seen:
                    assert time.monotonic() < deadline, "the prediction never reached the topic"
                    for records in consumer.poll(timeout_ms=500).values():
                        seen |= {json.loads(r.value)["transaction_id"] for r in records}
            finally:
                consumer.close()
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
