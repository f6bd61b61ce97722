"""`fraudctl serve`: the scoring service on uvicorn (uvloop, httptools), one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from core.settings import Settings, get_settings

if TYPE_CHECKING:
    import pandas as pd


def cli(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: settings, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings, 8000).")] = None,
    canary: Annotated[
        float | None, typer.Option(help="Start with this share (%) of cards decided by the challenger.")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (costs latency under load).")] = False,
) -> None:
    """Serve POST /v1/score with the registry's champion (and the challenger in shadow).

    Needs a trained model (`fraudctl train`) and features (`fraudctl backfill` or
    `fraudctl stream`); without them it still answers, by rules, and /readyz says why.
    Admin calls need the bearer token FRAUD_ADMIN_TOKEN.

    Example: fraudctl serve --port 8000
    """
    import logging

    import uvicorn

    from services.scoring.app import create_app

    # The prediction log reports the broker's state itself; kafka-python would log every
    # refused reconnect at ERROR while the broker is down.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = get_settings()
    updates = {
        k: v
        for k, v in {"serve_host": host, "serve_port": port, "canary_percent": canary}.items()
        if v is not None
    }
    settings = settings.model_copy(update=updates)
    uvicorn.run(
        create_app(settings),
        host=settings.serve_host,
        port=settings.serve_port,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level="info",
        # Longer than any client's idle time (uvicorn's default is 5 s): a client reusing a
        # connection the server has just closed sees a spurious disconnect.
        timeout_keep_alive=75,
    )


def start_in_background(
    settings: Settings, port: int, log_path: Path, timeout_s: float = 120.0
) -> subprocess.Popen:
    """`fraudctl serve` in its own process (as in production) on `port`, once /readyz says ready.

    The child reads its configuration from the environment, so `settings` are passed as
    FRAUD_* variables. Used by the demo and the benchmark.

    Raises:
        RuntimeError: the service exited or did not become ready in time (its log's tail).
    """
    import httpx

    env = os.environ | {
        "FRAUD_VAR_DIR": str(settings.var_dir),
        "FRAUD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FRAUD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "FRAUD_FEAST_PROJECT": settings.feast_project,
        "FRAUD_ADMIN_TOKEN": settings.admin_token,
        "FRAUD_REGISTRY_POLL_SECONDS": str(settings.registry_poll_seconds),
        "FRAUD_FEATURE_TIMEOUT_MS": str(settings.feature_timeout_ms),
        "FRAUD_SERVE_PORT": str(port),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        fraudctl = Path(sys.executable).parent / "fraudctl"
        process = subprocess.Popen([str(fraudctl), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the scoring service did not become ready: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo_step(settings: Settings, data_dir: Path, console: Any, cut: pd.Timestamp) -> None:
    """`fraudctl demo`'s serving step: serve → replay with --score → loadtest → canary, kill switch.

    The traffic is the day after `cut`, the online store's time (backfill's hold-back), with
    its own event times: the cards are scored against the history they had.
    """
    import httpx
    from rich.table import Table

    from pipelines.broker import EmbeddedBroker
    from pipelines.replay import replay
    from services.loadtest import result_table, run_load, training_decision_mix, transaction_pool

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with EmbeddedBroker(settings, bootstrap="127.0.0.1:0") as broker:
        serving = broker.settings.model_copy(update={"registry_poll_seconds": 5})
        service = start_in_background(serving, port, settings.var_dir / "demo_serve.log")
        try:
            console.print(f"scoring service on {url} (log: {settings.var_dir / 'demo_serve.log'})")
            scored = replay(data_dir, broker.settings, limit=1_000, progress=True, score_url=url, after=cut)
            console.print(
                f"replay --score --after {cut:%Y-%m-%d}: {scored.transactions:,} transactions of the "
                f"held-back day scored, then published, at {scored.achieved_rps:,.0f}/s; decisions "
                f"{scored.decisions}, {scored.with_card_history or 0:,} with card history, "
                f"errors {scored.score_errors or 0}"
            )
            pool = transaction_pool(data_dir=data_dir, after=cut.to_pydatetime())
            result = run_load(url, rps=500, duration_s=20, warmup_s=3, slo_p99_ms=10, transactions=pool,
                              progress=True)  # fmt: skip
            console.print(result_table(result, training_decision_mix(settings, pool)))
            admin = {"authorization": f"Bearer {serving.admin_token}"}
            body = pool.body(0)
            table = Table(title="who decides", show_header=True)
            for column in ("control", "served_by", "model_version", "decision"):
                table.add_column(column)
            with httpx.Client(base_url=url, timeout=5) as client:

                def show(control: str) -> None:
                    out = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
                    d = out.json()
                    version = d["model_version"] or "– (rules)"
                    table.add_row(control, d["served_by"], str(version), d["decision"])

                show("default")
                client.post("/admin/canary", json={"percent": 100}, headers=admin)
                show("canary 100%")
                client.post("/admin/canary", json={"percent": 0}, headers=admin)
                client.post("/admin/kill-switch", json={"state": "on"}, headers=admin)
                show("kill switch on")
                client.post("/admin/kill-switch", json={"state": "off"}, headers=admin)
                show("kill switch off")
            console.print(table)
        finally:
            service.terminate()
            service.wait(30)
