"""The compose profile run for real, without Docker: the compose services' own command lines.

This machine has a Docker client but no engine. So the fixture starts what docker-compose.yml
starts, with the addresses of this machine and the Tansu broker in place of Apache Kafka:

* the `mlflow` service's command: MLflow's tracking server on a real PostgreSQL database;
* the `init` job's script (`infra/init.sh`): simulate, backfill into the real Redis, publish
  the history to the broker, train and register through the server; run twice;
* `scoring`, two `stream` replicas (`--scale stream=2`: one consumer group), `monitor` and
  the `gateway` script, each with its compose command;
* Prometheus (Debian's package) with the stack's own prometheus.yml and alert rules, its
  Docker-DNS targets replaced by these processes.

Then: a transaction is scored with features from Redis and the model from the MLflow server,
and its prediction reaches the topic; every panel of every Grafana dashboard returns data
from that Prometheus; the two stream processors split the partitions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from core.dataset import read_transactions
from core.events import PREDICTIONS_TOPIC
from core.settings import Settings
from monitoring.dashboards import Prometheus, empty_queries, load_dashboards, render
from pipelines import kafka_clients
from pipelines.broker import EmbeddedBroker
from services.serve import free_port
from services.stack import local_prometheus_config
from tests.integration.scoring_support import as_body

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
BIN = Path(sys.executable).parent
# The test's world is small, and its replayed days mature in hours, not a week, so that every
# dashboard panel (drift windows, skew checks, matured cohorts included) has data in minutes.
FAST_LOOP = {
    "FRAUD_DEMO_DAYS": "28",
    "FRAUD_DEMO_CARDS": "400",
    "GATEWAY_DAYS": "2",
    "GATEWAY_RPS": "100",
    "FRAUD_MATURITY_DAYS": "0.25",
    "FRAUD_DRIFT_WINDOW_HOURS": "6",
    "FRAUD_DRIFT_MIN_ROWS": "50",
    "FRAUD_SKEW_SAMPLE_ROWS": "50",
}


@dataclass
class Stack:
    env: dict[str, str]
    var: Path
    logs: Path
    scoring_url: str = ""
    stream_ports: list[int] = field(default_factory=list)
    monitor_port: int = 0
    prometheus_url: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("w") as out:
            process = subprocess.Popen(
                command, env=env or self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.var.parent,
                start_new_session=True,
            )  # fmt: skip
        self.processes[name] = process
        return process

    def wait(self, name: str, check: Callable[[], bool], timeout_s: float) -> None:
        process, log = self.processes[name], self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        while True:
            assert process.poll() is None, f"{name} exited: {log.read_text()[-3000:]}"
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            assert time.monotonic() < deadline, (
                f"{name} not ready in {timeout_s:.0f} s: {log.read_text()[-3000:]}"
            )
            time.sleep(0.5)

    def stop(self) -> None:
        for name, process in self.processes.items():
            if name == "gateway":  # a script: its replay child too
                os.killpg(process.pid, signal.SIGTERM)
            else:  # fraudctl stops its own children in order (the scoring service flushes its log)
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _fraudctl(service: str, replace: dict[str, str]) -> list[str]:
    """A compose service's `fraudctl` command, with these option values replaced."""
    command = list(SERVICES[service]["command"])
    for flag, value in replace.items():
        command[command.index(flag) + 1] = value
    return [str(BIN / "fraudctl"), *command]


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


def _metric(url: str, name: str) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=5).text
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_database: str) -> Iterator[Stack]:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus is not installed: apt-get install prometheus (.ci/run installs it)")
    root = tmp_path_factory.mktemp("compose")
    mlflow_port = free_port()
    with EmbeddedBroker(Settings(var_dir=root / "broker"), bootstrap="127.0.0.1:0") as broker:
        env = (
            os.environ
            | {
                **{
                    k: str(v)
                    for k, v in SERVICES["scoring"]["environment"].items()
                    if not str(v).startswith("$")
                },
                "PATH": f"{BIN}:{os.environ['PATH']}",
                "FRAUD_VAR_DIR": str(root / "var"),  # the app-data volume every app service shares
                "FRAUD_KAFKA_BOOTSTRAP": broker.settings.kafka_bootstrap,
                "FRAUD_REDIS_URL": "127.0.0.1:6379",
                "FRAUD_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
                "FRAUD_FEAST_PROJECT": f"fraud_compose_{uuid.uuid4().hex[:8]}",
                "FRAUD_ADMIN_TOKEN": "test-compose-token",
                "IMPORT_DIR": str(root / "import"),  # empty: the init job simulates
                **FAST_LOOP,
            }
        )
        assert env["FRAUD_PROFILE"] == "compose"
        (root / "logs").mkdir()
        s = Stack(env, root / "var", root / "logs")
        try:
            _start_mlflow(s, postgres_database, mlflow_port)
            _run_init_twice(s)
            _start_apps(s)
            _start_prometheus(s, prometheus)
            yield s
        finally:
            s.stop()


def _start_mlflow(s: Stack, backend: str, port: int) -> None:
    s.spawn("mlflow", _mlflow_command(backend, s.var.parent / "artifacts", port))
    health = SERVICES["mlflow"]["healthcheck"]["test"][-1].replace("mlflow:5000", f"127.0.0.1:{port}")
    s.wait("mlflow", lambda: subprocess.run([sys.executable, "-c", health], timeout=30).returncode == 0, 180)
    # The apps' Host header (mlflow:5000) is allowed, one the allowed hosts do not name is
    # refused: the security middleware is on, and configured.
    search = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search, headers={"host": "mlflow:5000"}).status_code == 200
    assert httpx.get(search, headers={"host": "elsewhere.example:5000"}).status_code == 403


def _run_init_twice(s: Stack) -> None:
    script = str(ROOT / SERVICES["init"]["entrypoint"][-1].removeprefix("/app/"))
    init = subprocess.run(
        ["sh", script], env=s.env, capture_output=True, text=True, timeout=600, cwd=s.var.parent
    )
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    again = subprocess.run(["sh", script], env=s.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for skipped in ("a champion is registered", "features already backfilled", "history already published"):
        assert skipped in again.stdout, again.stdout


def _start_apps(s: Stack) -> None:
    """Scoring, two stream replicas and the monitor start side by side, as compose starts them
    once the init job is done; the gateway once they are up."""
    scoring_port, s.monitor_port = free_port(), free_port()
    s.scoring_url = f"http://127.0.0.1:{scoring_port}"
    s.spawn("scoring", _fraudctl("scoring", {"--host": "127.0.0.1", "--port": str(scoring_port)}))
    for replica in (1, 2):  # docker compose up --scale stream=2
        port = free_port()
        s.stream_ports.append(port)
        s.spawn(f"stream-{replica}", _fraudctl("stream", {"--metrics-port": str(port)}))
    monitor_env = s.env | {"FRAUD_SCORING_URLS": json.dumps([s.scoring_url])}
    s.spawn("monitor", _fraudctl("monitor", {"--port": str(s.monitor_port)}), monitor_env)
    s.wait("scoring", lambda: httpx.get(f"{s.scoring_url}/readyz").status_code == 200, 180)
    for replica, port in enumerate(s.stream_ports, 1):  # both in the group, each with its share
        url = f"http://127.0.0.1:{port}/metrics"
        s.wait(
            f"stream-{replica}",
            lambda url=url: sum(_metric(url, "fraud_stream_assigned_partitions")) > 0,
            120,
        )
    s.wait("monitor", lambda: httpx.get(f"http://127.0.0.1:{s.monitor_port}/metrics").status_code == 200, 120)
    gateway_env = s.env | {
        "GATEWAY_SCORE_URL": s.scoring_url,
        "GATEWAY_ALIVE_FILE": str(s.var / "gateway-alive"),
    }
    s.spawn(
        "gateway",
        ["sh", str(ROOT / SERVICES["gateway"]["entrypoint"][-1].removeprefix("/app/"))],
        gateway_env,
    )


def _start_prometheus(s: Stack, binary: str) -> None:
    port = free_port()
    targets = {
        "scoring": [s.scoring_url.removeprefix("http://")],
        "stream": [f"127.0.0.1:{p}" for p in s.stream_ports],
        "monitor": [f"127.0.0.1:{s.monitor_port}"],
    }
    config = s.var.parent / "prometheus.yml"
    config.write_text(local_prometheus_config(targets, scrape_interval="1s"))
    s.prometheus_url = f"http://127.0.0.1:{port}"
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={s.var.parent / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    s.spawn("prometheus", command)
    s.wait("prometheus", lambda: httpx.get(f"{s.prometheus_url}/-/ready").status_code == 200, 60)


def test_the_compose_services_score_with_redis_features_and_the_mlflow_servers_model(stack: Stack) -> None:
    url = stack.scoring_url
    model = httpx.get(f"{url}/v1/model").json()
    assert model["controls_shared_in"].startswith("redis ")
    transaction = read_transactions(stack.var / "data").drop(columns=["scenario"]).iloc[-1].to_dict()
    reply = httpx.post(f"{url}/v1/score", json=as_body(transaction), timeout=10).json()
    assert reply["served_by"] == "champion"
    assert reply["model_version"] == model["champion"]["version"]
    assert "card" in reply["stored_features"], reply  # read from Redis

    settings = Settings(profile="embedded", kafka_bootstrap=stack.env["FRAUD_KAFKA_BOOTSTRAP"])
    consumer = kafka_clients.consumer(settings, f"compose-test-{uuid.uuid4().hex[:6]}", [PREDICTIONS_TOPIC])
    try:
        deadline, seen = time.monotonic() + 60, set()
        while transaction["transaction_id"] not in seen:
            assert time.monotonic() < deadline, "the prediction never reached the topic"
            for records in consumer.poll(timeout_ms=500).values():
                seen |= {json.loads(r.value)["transaction_id"] for r in records}
    finally:
        consumer.close()


def _monitor_has(stack: Stack, *names: str) -> bool:
    url = f"http://127.0.0.1:{stack.monitor_port}/metrics"
    return all(any(v == v for v in _metric(url, name)) for name in names)  # v == v: not NaN


def test_every_dashboard_panel_returns_data_from_prometheus(stack: Stack, tmp_path: Path) -> None:
    # The slowest panels: a drift window, a skew check and a matured day, in event time.
    slow = ("fraud_drift_psi", "fraud_skew_mismatch_share", "fraud_performance_matured_precision")
    stack.wait("monitor", lambda: _monitor_has(stack, *slow), 300)
    time.sleep(5)  # a few more scrapes: a rate() needs two samples of the newest series
    prometheus = Prometheus(stack.prometheus_url)
    empty = empty_queries(prometheus, minutes=5)
    assert not empty, "\n".join(f"{q.dashboard} / {q.panel} ({q.ref}): {why}: {q.expr}" for q, why in empty)
    for name, dashboard in load_dashboards().items():  # the PNG renderer reads the same queries
        assert render(prometheus, dashboard, tmp_path / f"{name}.png", minutes=5).stat().st_size > 10_000


def test_two_stream_replicas_share_the_partitions(stack: Stack) -> None:
    prometheus = Prometheus(stack.prometheus_url)
    owned = {
        s["metric"]["instance"]: float(s["value"][1])
        for s in prometheus.instant("fraud_stream_assigned_partitions")
    }
    assert len(owned) == 2 and all(owned.values()), owned
    partitions = kafka_clients.topic_partitions(Settings(kafka_bootstrap=stack.env["FRAUD_KAFKA_BOOTSTRAP"]))
    # Every partition of the input topics has exactly one owner between them.
    assert sum(owned.values()) == partitions_of_inputs(partitions), (owned, partitions)
    dead = prometheus.instant('sum(fraud_stream_events_total{outcome="dead_lettered"})')
    assert float(dead[0]["value"][1]) == 0


def partitions_of_inputs(partitions: dict[str, int]) -> int:
    from pipelines.stream import INPUT_TOPICS

    return sum(partitions[topic] for topic in INPUT_TOPICS)
