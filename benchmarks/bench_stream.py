"""Benchmark: the stream processor, events published → feature rows written online.

Two runs, each against a fresh embedded broker and a fresh feature store, with one
`fraudctl stream` process (its own interpreter, as in production) and the replay
(the payment gateway) publishing from this process:

1. throughput: publish as fast as the gateway can; events/s = events consumed
   (transactions + labels) / (last online write − first publish).
   SLO: ≥ 10,000 events/s (`stream_events_per_second`).
2. freshness at 1,000 transactions/s: seconds from a transaction's publish time to
   its rows being written online, p50/p99 per view. The device view is two hops away
   (card task → device task), so it is the one the SLO is read from.
   SLO: p99 ≤ 1 s (`freshness_p99_seconds`).

    python -m benchmarks.bench_stream
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from core.settings import PROJECT_ROOT, Settings
from pipelines.broker import EmbeddedBroker
from pipelines.replay import replay
from pipelines.simulate import SimulationParams
from pipelines.simulate import run as simulate

BENCH_DIR = PROJECT_ROOT / "var" / "bench" / "stream"
DATA = SimulationParams(days=10, cards=20_000, merchants=2_000, seed=7)
THROUGHPUT_TRANSACTIONS = 200_000
FRESHNESS_RPS = 1_000
FRESHNESS_TRANSACTIONS = 30_000


def _dataset() -> Path:
    data_dir = BENCH_DIR / "data"
    if not (data_dir / "manifest.json").exists():
        simulate(data_dir, DATA)
    return data_dir


def _run(name: str, data_dir: Path, rps: float, limit: int) -> tuple[dict[str, Any], float]:
    """Start a processor, wait until it owns its partitions, replay; return its summary."""
    var_dir = BENCH_DIR / name
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    with EmbeddedBroker(Settings(var_dir=var_dir), bootstrap="127.0.0.1:0") as broker:
        env = {
            **os.environ,
            "FRAUD_VAR_DIR": str(var_dir),
            "FRAUD_KAFKA_BOOTSTRAP": broker.bootstrap,
            "FRAUD_FEAST_PROJECT": f"bench_{name}",
        }
        log_path = var_dir / "stream.log"
        with log_path.open("w") as log:
            fraudctl = str(Path(sys.executable).parent / "fraudctl")
            command = [fraudctl, "stream", "--idle-exit", "5", "--json", "--metrics-port", "-1"]
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
            deadline = time.monotonic() + 120
            while "assigned" not in log_path.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"stream processor did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            settings = Settings(
                var_dir=var_dir, kafka_bootstrap=broker.bootstrap, feast_project=f"bench_{name}"
            )
            published_at = time.time()
            summary = replay(data_dir, settings, rps=rps, limit=limit)
            if summary.failed:
                raise RuntimeError(f"replay failed: {summary.first_error}")
            stdout, _ = process.communicate(timeout=600)
    if process.returncode != 0:
        raise RuntimeError(f"stream processor exited {process.returncode}: {log_path.read_text()[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), published_at


def run_benchmark() -> dict[str, Any]:
    data_dir = _dataset()
    fast, published_at = _run("throughput", data_dir, rps=0, limit=THROUGHPUT_TRANSACTIONS)
    events = fast["consumed"]["transactions"] + fast["consumed"].get("labels", 0)
    seconds = fast["last_written_at"] - published_at
    paced, _ = _run("freshness", data_dir, rps=FRESHNESS_RPS, limit=FRESHNESS_TRANSACTIONS)
    device_p99 = paced["freshness_device_activity_p99_seconds"]
    card_p99 = paced["freshness_card_velocity_p99_seconds"]
    return {
        "stream_events_per_second": round(events / seconds, 1),
        "stream_events": events,
        "stream_seconds": round(seconds, 2),
        "stream_counts_balanced": fast["balanced"] and paced["balanced"],
        "freshness_p99_seconds": max(device_p99, card_p99),
        "freshness_card_p50_seconds": paced["freshness_card_velocity_p50_seconds"],
        "freshness_card_p99_seconds": card_p99,
        "freshness_device_p50_seconds": paced["freshness_device_activity_p50_seconds"],
        "freshness_device_p99_seconds": device_p99,
        "freshness_rps": FRESHNESS_RPS,
    }


if __name__ == "__main__":
    print(json.dumps(run_benchmark(), indent=2))
