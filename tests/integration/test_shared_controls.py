"""The canary share and the kill switch are shared by every scoring process.

Two `fraudctl serve` processes on one `var/` (the embedded profile's replicas: one registry,
one online store, a spool each) behind no load balancer: one admin call, made to one of
them, must change `served_by` on both within a second. Then the same store on real Redis
(the compose profile's), read and written from two stores as two replicas would.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from core.dataset import read_transactions
from core.settings import Settings
from pipelines.broker import EmbeddedBroker
from services.scoring.controls import RedisControlStore
from services.serve import free_port, start_in_background
from tests.integration.scoring_support import ADMIN, as_body
from tests.integration.skew_support import TrainingSide

pytestmark = pytest.mark.slow
BOUND_S = 1.0  # the bound: every replica applies a change within a second


@pytest.fixture(scope="module")
def replicas(training_side: TrainingSide, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    var = tmp_path_factory.mktemp("replicas") / "var"
    var.mkdir()
    shutil.copy(training_side.settings.var_dir / "mlflow.db", var / "mlflow.db")
    shutil.copytree(training_side.settings.feast_dir, var / "feast")
    base = Settings(profile="embedded", var_dir=var, admin_token="test-admin-token")
    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker, ThreadPoolExecutor(2) as pool:
        ports = [free_port(), free_port()]
        # Started side by side: each start waits until its process says ready (~25 s).
        starts = [
            pool.submit(start_in_background, broker.settings, p, var / f"serve-{p}.log", 180) for p in ports
        ]
        try:
            for start in starts:
                start.result()  # both ready (or the start's error)
            yield [f"http://127.0.0.1:{port}" for port in ports]
        finally:
            for start in starts:
                process = start.result()
                process.terminate()
                process.wait(30)


def _served_by(url: str, body: dict) -> str:
    response = httpx.post(f"{url}/v1/score", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["served_by"])


def _within(bound_s: float, check: Callable[[], bool]) -> float:
    """Seconds until `check` held; fails past the bound."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < bound_s, f"not applied within {bound_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_one_admin_call_changes_served_by_on_every_replica(
    replicas: list[str], training_side: TrainingSide
) -> None:
    first, second = replicas
    body = as_body(read_transactions(training_side.data_dir).drop(columns=["scenario"]).iloc[-1].to_dict())
    assert {_served_by(url, body) for url in replicas} == {"champion"}
    where = httpx.get(f"{second}/v1/model").json()["controls_shared_in"]
    assert where.startswith("file ") and where.endswith("scoring_controls.json")

    # The kill switch, set on the first replica only.
    admin = {"headers": ADMIN, "timeout": 10}
    assert httpx.post(f"{first}/admin/kill-switch", json={"state": "on"}, **admin).status_code == 200
    assert _served_by(first, body) == "kill_switch"  # the replica that took the call: at once
    _within(BOUND_S, lambda: _served_by(second, body) == "kill_switch")
    assert httpx.get(f"{second}/v1/model").json()["kill_switch"] is True

    # The canary share, set on the second; the kill switch off again from the first.
    assert httpx.post(f"{second}/admin/canary", json={"percent": 100}, **admin).status_code == 200
    assert httpx.post(f"{first}/admin/kill-switch", json={"state": "off"}, **admin).status_code == 200
    for url in replicas:
        _within(BOUND_S, lambda url=url: _served_by(url, body) == "canary")
    models = [httpx.get(f"{url}/v1/model").json() for url in replicas]
    assert [(m["canary_percent"], m["kill_switch"]) for m in models] == [(100.0, False)] * 2

    assert httpx.post(f"{first}/admin/canary", json={"percent": 0}, **admin).status_code == 200
    _within(BOUND_S, lambda: _served_by(second, body) == "champion")


def test_two_redis_stores_share_the_controls_and_keep_each_others_fields(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    project = f"test_{tmp_path.name}"
    one, other = RedisControlStore("127.0.0.1:6379", project), RedisControlStore("127.0.0.1:6379", project)
    try:
        one.client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    try:
        assert other.read() == {}
        one.write({"kill_switch": True})
        other.write({"canary_percent": 25.0})
        assert one.read() == other.read() == {"kill_switch": True, "canary_percent": 25.0}
    finally:
        one.client.delete(one.key)
