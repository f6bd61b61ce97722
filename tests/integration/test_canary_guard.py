"""The canary guard and the automatic rollback against real scoring processes.

Two scoring services (uvicorn, Feast's SQLite online store, the MLflow registry, ONNX Runtime,
each with its prediction writer process) publish to an embedded Kafka broker; the test reads
`predictions` with kafka-python into the monitor's own state (`MonitorState`), and ticks the
guard (`monitoring.rollback.Guard`) on that frame as the monitor does. The guard acts only
through the services' admin API and the registry, on both processes.

1. A bad challenger, given 25 % by hand, is stopped at its first verdict: canary 0 on both
   processes, the champion unchanged.
2. A good challenger goes shadow → 25 % → 50 % → champion, the old champion shadows it, and
   both processes serve it.
3. A bad version promoted by hand is rolled back to the previous champion, both processes
   serve that one again, and the next tick does not roll anything back.

The versions are the session's champion (LightGBM, `training_side`) re-registered with its
calibration changed, through MLflow's own client: the bad one with the Platt slope negated (a
sign error: it ranks backwards), the good one with the intercept moved by 0.1 (a
recalibration: the same ranking, slightly higher scores). Training a model on shuffled labels
is `fraudctl drill bad-challenger`'s way, and a minute more here.

The transactions are the dataset's last ones, re-dated to follow its end (10 s apart, new
ids): the online store holds every card's state at the end of the data, so each one is scored
with that history. The guard's durations are event time, shortened to this traffic (holds of
30 min, 100 rows per arm, rate shifts below 1 point let through). The latency check is given
50 ms of slack: both services share two cores with this test (and other tests); the check
itself is tested in tests/unit.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from kafka import KafkaConsumer

from core.dataset import read_transactions
from core.events import PREDICTIONS_TOPIC, Prediction
from core.settings import Settings
from models import registry
from monitoring import audit
from monitoring.canary import GuardConfig
from monitoring.metrics import MonitorMetrics
from monitoring.rollback import CANARY, STOPPED, Guard
from monitoring.state import MonitorState
from pipelines import kafka_clients
from pipelines.broker import EmbeddedBroker
from tests.integration.scoring_support import ADMIN, as_body, running_service, service_settings
from tests.integration.skew_support import TrainingSide

pytestmark = pytest.mark.slow

CONFIG = GuardConfig(
    steps=(25.0, 50.0),
    hold=timedelta(minutes=30),
    min_rows=100,
    watch_hold=timedelta(minutes=30),
    baseline=timedelta(hours=6),
    latency_slack_ms=50.0,
    # A window here holds a few hundred rows, so one review more is 0.3 points: the default
    # 0.2-point floor (for 1,000 rows a window) would call a single row a shift.
    review_abs=0.01,
    decline_abs=0.01,
)
SPACING = pd.Timedelta(seconds=10)


@pytest.fixture(scope="module")
def base(training_side: TrainingSide, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A copy of the trained registry and store: the aliases move here, not in the session's."""
    var = tmp_path_factory.mktemp("guard") / "var"
    var.mkdir()
    shutil.copy(training_side.settings.var_dir / "mlflow.db", var / "mlflow.db")
    shutil.copytree(training_side.settings.feast_dir, var / "feast")
    return Settings(profile="embedded", var_dir=var)


def recalibrated(settings: Settings, version: str, folder: Path, slope: float, shift: float) -> str:
    """``version``'s files with its Platt calibration changed, registered as a new version."""
    shutil.copytree(registry.load_version(settings, version=version).folder, folder)
    path = folder / "extra_files" / registry.METADATA_FILE
    metadata = json.loads(path.read_text())
    assert metadata["calibration"]["method"] == "platt"
    metadata["calibration"]["slope"] *= slope
    metadata["calibration"]["intercept"] += shift
    path.write_text(json.dumps(metadata))
    created = registry.connect(settings).create_model_version(registry.MODEL_NAME, source=folder.as_uri())
    return str(created.version)


class Traffic:
    """The dataset's last transactions, re-dated after its end, sent round-robin to every service."""

    def __init__(self, data_dir: Path, clients: list[httpx.Client]) -> None:
        frame = read_transactions(data_dir).drop(columns=["scenario"]).sort_values("event_time")
        self.rows = frame.tail(3_000).to_dict("records")
        self.end = pd.Timestamp(frame["event_time"].max())
        self.clients = clients
        self.sent = 0

    @property
    def now(self) -> pd.Timestamp:
        return self.end + SPACING * self.sent

    def send(self, n: int) -> set[str]:
        ids = set()
        for _ in range(n):
            row = dict(self.rows[self.sent % len(self.rows)])
            self.sent += 1
            row["transaction_id"] = f"guard-{self.sent:05d}"
            row["event_time"] = self.now
            response = self.clients[self.sent % len(self.clients)].post("/v1/score", json=as_body(row))
            assert response.status_code == 200, response.text
            ids.add(row["transaction_id"])
        return ids


def _not_passed(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in evaluation["checks"] if c["outcome"] not in ("pass", "pending")]


@dataclass
class World:
    settings: Settings  # the guard's: the services' admin token, the shared registry
    clients: list[httpx.Client]
    traffic: Traffic
    consumer: KafkaConsumer
    state: MonitorState
    champion: str

    def collect(self, ids: set[str], timeout_s: float = 90.0) -> None:
        """Consume `predictions` until every id arrived (the writers batch and shadow-score)."""
        missing = set(ids)
        deadline = time.monotonic() + timeout_s
        while missing:
            assert time.monotonic() < deadline, f"{len(missing)} of {len(ids)} predictions never arrived"
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    prediction = Prediction.model_validate_json(record.value)
                    self.state.add_prediction(prediction)
                    missing.discard(prediction.transaction_id)

    def score(self, n: int) -> pd.Timestamp:
        self.collect(self.traffic.send(n))
        return self.traffic.now

    def tick(self, guard: Guard) -> dict[str, Any]:
        report = guard.tick(self.state.predictions, self.state.labels, self.traffic.now)
        assert report["errors"] == [], report["errors"]
        return report

    def models(self) -> list[dict[str, Any]]:
        return [client.get("/v1/model").json() for client in self.clients]

    def as_a_person(self, path: str, body: dict[str, Any] | None = None) -> None:
        for client in self.clients:
            assert client.post(path, json=body, headers=ADMIN).status_code == 200


@pytest.fixture(scope="module")
def world(base: Settings, training_side: TrainingSide) -> Iterator[World]:
    champion = registry.current_version(registry.connect(base), registry.CHAMPION)
    assert champion is not None
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(base, bootstrap="127.0.0.1:0"))
        first = service_settings(broker.settings)
        # The second process has its own var/ (its own prediction spool) and the same registry.
        second = first.model_copy(update={"var_dir": base.var_dir.parent / "var2"})
        shutil.copytree(base.feast_dir, second.feast_dir)
        # A first start imports Feast and spawns the prediction writer: ~1 min on a loaded machine.
        clients = [stack.enter_context(running_service(s, timeout_s=180)) for s in (first, second)]
        consumer = kafka_clients.consumer(broker.settings, "guard-test", [PREDICTIONS_TOPIC])
        stack.callback(consumer.close)
        state = MonitorState(base.var_dir / "monitor-test")
        yield World(first, clients, Traffic(training_side.data_dir, clients), consumer, state, champion)


def test_the_guard_stops_a_bad_canary_promotes_a_good_one_and_rolls_back_a_bad_champion(
    world: World, base: Settings, tmp_path: Path
) -> None:
    settings, original = world.settings, world.champion
    metrics = MonitorMetrics()
    urls = [str(c.base_url) for c in world.clients]
    guard = Guard(settings, CONFIG, urls=urls, metrics=metrics)
    bad = recalibrated(base, original, tmp_path / "bad", slope=-1.0, shift=0.0)
    good = recalibrated(base, original, tmp_path / "good", slope=1.0, shift=0.1)

    def count(action: str) -> float | None:
        return metrics.registry.get_sample_value("fraud_monitor_actions_total", {"action": action})

    # --- 1. a bad challenger, given a canary share by hand, is stopped ---------------------
    registry.promote(base, bad, registry.CHALLENGER, reason="test: bad challenger", by="tests")
    world.as_a_person("/admin/reload")
    world.tick(guard)
    world.as_a_person("/admin/canary", {"percent": 25.0})
    world.score(600)
    report = world.tick(guard)
    assert report["canary"]["verdict"] == "fail", report["canary"]
    failed = {c["name"] for c in report["canary"]["checks"] if c["outcome"] == "fail"}
    assert {"review_rate", "rank_correlation"} <= failed, failed
    assert report["actions"][0]["audit_as"] == "canary_stop" and report["actions"][0]["percent"] == 0.0
    assert guard.state.phase == STOPPED and bad in guard.state.blocked
    assert all(m["canary_percent"] == 0.0 for m in world.models())  # every process, at once
    assert all(m["champion"]["version"] == original for m in world.models())
    assert registry.current_version(registry.connect(base), registry.CHAMPION) == original
    stops = [e for e in audit.read(base) if e["action"] == "canary_stop"]
    assert len(stops) == 1 and stops[0]["actor"] == "monitor"
    assert "rank_correlation fail (critical)" in stops[0]["reason"]
    assert count("canary_stop") == 1
    assert (
        metrics.registry.get_sample_value("fraud_canary_check_failures_total", {"check": "rank_correlation"})
        == 1
    )

    # --- 2. a good challenger steps up and is promoted ---------------------------------------
    registry.promote(base, good, registry.CHALLENGER, reason="test: good challenger", by="tests")
    world.as_a_person("/admin/reload")
    world.score(300)  # shadow: 50 min of event time, every row scored by both
    report = world.tick(guard)
    assert report["canary"]["rows"]["paired"] >= CONFIG.min_rows and report["canary"]["verdict"] == "pass", (
        report
    )
    assert [a["percent"] for a in report["actions"]] == [25.0] and guard.state.phase == CANARY
    assert all(m["canary_percent"] == 25.0 for m in world.models())

    # The monitor restarts: the guard comes back from its checkpointed state.
    guard = Guard.from_state(settings, json.loads(json.dumps(guard.state_dict())), CONFIG, urls, metrics)
    world.score(600)
    report = world.tick(guard)
    assert report["canary"]["rows"]["candidate"] >= CONFIG.min_rows, report["canary"]["rows"]
    assert [a["percent"] for a in report["actions"]] == [50.0], report
    world.score(300)
    report = world.tick(guard)
    assert report["canary"]["verdict"] == "pass", report["canary"]
    assert [a["kind"] for a in report["actions"]] == ["canary", "promote", "reload"]
    client = registry.connect(base)
    assert registry.current_version(client, registry.CHAMPION) == good
    assert registry.current_version(client, registry.CHALLENGER) == original  # it shadows the new one
    for served in world.models():
        assert (served["champion"]["version"], served["challenger"]["version"]) == (good, original)
        assert served["canary_percent"] == 0.0
    assert count("canary_step") == 2 and count("promote") == 1

    world.score(300)
    report = world.tick(guard)
    assert report["watch"]["paired"] and report["watch"]["verdict"] == "pass", _not_passed(report["watch"])
    assert report["actions"] == [] and guard.state.watch is not None and guard.state.watch["fast_done"]

    # --- 3. a bad champion promoted by hand is rolled back ------------------------------------
    registry.promote(base, bad, registry.CHAMPION, reason="test: a bad release by hand", by="tests")
    world.as_a_person("/admin/reload")
    assert all(m["champion"]["version"] == bad for m in world.models())
    world.score(300)
    report = world.tick(guard)
    assert report["watch"]["paired"] is False, report["watch"]  # the old champion does not shadow it
    assert [a["kind"] for a in report["actions"]] == ["rollback", "reload"], report
    assert registry.current_version(registry.connect(base), registry.CHAMPION) == good
    for client, served in zip(world.clients, world.models(), strict=True):
        assert served["champion"]["version"] == good
        scored = client.post(
            "/v1/score", json=as_body({**world.traffic.rows[0], "transaction_id": "after"})
        ).json()
        assert scored["model_version"] == good and scored["served_by"] == "champion"
    reason = report["actions"][0]["check"]
    assert metrics.registry.get_sample_value("fraud_rollbacks_total", {"reason": reason}) == 1
    assert count("rollback") == 1
    rollbacks = [e for e in audit.read(base) if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["actor"] == "monitor"
    assert rollbacks[0]["versions"] == {"alias": "champion", "from": bad, "to": good}

    # No loop: the restored champion is not watched, the next tick does nothing.
    world.score(100)
    report = world.tick(guard)
    assert report["actions"] == [] and guard.state.watch is None
    assert registry.current_version(registry.connect(base), registry.CHAMPION) == good
