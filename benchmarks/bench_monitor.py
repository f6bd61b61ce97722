"""Monitor throughput: predictions + labels consumed and evaluated per second, one process.

`monitor_events_per_second` (DESIGN.md section 7, target >= 5,000/s): a log of synthetic
prediction records (the schema the scoring service writes, 36 features each) and their
labels is published to the embedded broker first, then one `Monitor` reads all of it:
parsing, dedupe, the state, the checkpoints and every event-time window it closes (drift
needs a champion: with none, the windows run the performance views only; the figure with
a champion is `monitor_events_per_second_with_champion` when the demo's registry exists).
The clock runs from the first record to the last evaluated window.

`drift_report_seconds`: one Evidently 0.7 drift report (PSI, HTML written) on 50,000 rows x
the 36 features and the score, the page saved with each alarm.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from core.events import LABELS_TOPIC, PREDICTIONS_TOPIC
from core.features import MODEL_FEATURES
from core.settings import Settings

PREDICTIONS = 60_000
LABEL_SHARE = 0.02
START = datetime(2026, 3, 1, tzinfo=UTC)


def synthetic_log(
    n: int, seed: int = 0, days: float = 6.0
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """`n` prediction records (key, JSON) in event-time order over `days`, and labels for ~2 %."""
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.uniform(0, days * 86_400, n))
    features = rng.gamma(2.0, 1.0, size=(n, len(MODEL_FEATURES))).round(4)
    scores = rng.beta(0.5, 60, n)
    predictions, labels = [], []
    for i in range(n):
        event_time = START + timedelta(seconds=float(offsets[i]))
        tid = f"t{seed}_{i:07d}"
        record: dict[str, Any] = {
            "transaction_id": tid,
            "card_id": f"c{i % 5000}",
            "merchant_id": f"m{i % 300}",
            "device_id": None,
            "event_time": event_time.isoformat(),
            "scored_at": event_time.isoformat(),
            "score": float(scores[i]),
            "decision": "review" if scores[i] > 0.05 else "approve",
            "served_by": "champion",
            "model_version": "1",
            "rule_hits": [],
            "features": dict(zip(MODEL_FEATURES, features[i].tolist(), strict=True)),
            "latency_ms": {"total": 2.0},
        }
        predictions.append((tid, json.dumps(record).encode()))
        if rng.random() < LABEL_SHARE:
            label = {
                "transaction_id": tid,
                "card_id": record["card_id"],
                "is_fraud": bool(rng.random() < 0.3),
                "reported_at": (event_time + timedelta(days=float(rng.uniform(1, 20)))).isoformat(),
                "source": "chargeback",
            }
            labels.append((tid, json.dumps(label).encode()))
    return predictions, labels


def publish(
    settings: Settings, predictions: list[tuple[str, bytes]], labels: list[tuple[str, bytes]]
) -> None:
    from pipelines import kafka_clients

    kafka_clients.ensure_topics(settings)
    producer = kafka_clients.producer(settings)
    for key, value in predictions:
        producer.send(PREDICTIONS_TOPIC, key=key, value=value)
    for key, value in labels:
        producer.send(LABELS_TOPIC, key=key, value=value)
    producer.flush()
    producer.close()


def run_benchmark() -> dict[str, Any]:
    from monitoring.monitor import Monitor
    from pipelines.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(var_dir=Path(tmp) / "var", drift_window_hours=6)
        with EmbeddedBroker(settings, bootstrap="127.0.0.1:0") as broker:
            predictions, labels = synthetic_log(PREDICTIONS)
            publish(broker.settings, predictions, labels)
            monitor = Monitor(broker.settings, group_id="bench-monitor")
            summary = monitor.run(idle_exit_s=3)
            events = sum(summary.consumed.values())
            # From the first record to the last work done: not the group join, not the idle exit.
            busy = summary.busy_seconds
    return {
        "monitor_events_per_second": round(events / busy, 1),
        "monitor_events": events,
        "monitor_windows_evaluated": summary.windows_evaluated,
        "drift_report_seconds": drift_report_seconds(),
    }


def drift_report_seconds(rows: int = 50_000) -> float:
    """One Evidently drift report (HTML written) on `rows` current rows x every drift column."""
    import time

    import pandas as pd

    from monitoring.drift import DRIFT_COLUMNS, evidently_report

    rng = np.random.default_rng(1)
    reference = pd.DataFrame(rng.gamma(2.0, 1.0, (5_000, len(DRIFT_COLUMNS))), columns=DRIFT_COLUMNS)
    current = pd.DataFrame(rng.gamma(2.2, 1.0, (rows, len(DRIFT_COLUMNS))), columns=DRIFT_COLUMNS)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        evidently_report(reference, current, path=Path(tmp) / "report.html")
        return round(time.perf_counter() - started, 2)
