"""What the scoring-service tests share: a trained registry, a real uvicorn server, requests.

The service under test is the real one (Feast online store, MLflow registry, ONNX Runtime,
kafka-python against the embedded broker), served by uvicorn on a free port in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from core.dataset import read_transactions
from core.settings import Settings
from models import registry
from pipelines import simulate
from pipelines.backfill import backfill
from pipelines.train import LIGHTGBM, MLP, TrainRequest, train
from services.scoring.app import create_app

# The training test's data: 28 days leave two weeks of training after the default split.
SERVICE_DATA = simulate.SimulationParams(days=28, cards=400, merchants=50, seed=5, fraud_rate=0.02)
ADMIN = {"authorization": "Bearer test-admin-token"}


def trained_registry(settings: Settings, hold_back_days: int = 0) -> dict[str, str]:
    """Simulate, backfill and train into `settings.var_dir`; champion LightGBM, challenger MLP.

    `hold_back_days`: the online store leaves out the data's last days (`backfill`).
    """
    data = settings.var_dir / "data"
    simulate.run(data, SERVICE_DATA)
    if hold_back_days:
        backfill(data, settings, hold_back_days=hold_back_days)  # train then finds the store filled
    result = train(settings, TrainRequest(data_dir=data, seed=3))
    registry.promote(settings, result.versions[LIGHTGBM], registry.CHAMPION, reason="test", by="tests")
    registry.promote(settings, result.versions[MLP], registry.CHALLENGER, reason="test", by="tests")
    return {"champion": result.versions[LIGHTGBM], "challenger": result.versions[MLP]}


def service_settings(base: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "admin_token": "test-admin-token",
        "registry_poll_seconds": 0,
        "serve_port": 0,
        # Generous: tests share two cores with other tests; the stall test sets its own.
        "feature_timeout_ms": 200,
        **overrides,
    }
    return base.model_copy(update=values)


@contextmanager
def running_service(settings: Settings, timeout_s: float = 60.0) -> Iterator[httpx.Client]:
    """The app on uvicorn (uvloop, httptools) in a thread; yields a client on its address."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive(), "the service failed to start"
        assert time.monotonic() < deadline, "the service did not start in time"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # The prediction writer imports and loads for a few seconds; tests start after it.
            while "prediction writer starting" in client.get("/readyz").json()["problems"]:
                assert time.monotonic() < deadline, "the prediction writer did not start in time"
                time.sleep(0.1)
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


def request_bodies(data_dir: Path, n: int, seed: int = 1) -> list[dict[str, Any]]:
    """`n` simulated transactions as API bodies (event schema JSON, no simulator tags)."""
    frame = read_transactions(data_dir).sample(n, random_state=seed).drop(columns=["scenario"])
    return [as_body(row) for row in frame.to_dict("records")]


def as_body(row: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
    body["event_time"] = pd.Timestamp(body["event_time"]).isoformat()
    return json.loads(json.dumps(body, default=str))


def scraped_metrics(client: httpx.Client) -> dict[str, float]:
    """The service's `/metrics`, parsed: ``{'name{label=value,...}': value}``."""
    values = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values
