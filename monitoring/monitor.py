"""`fraudctl monitor`: read every decision and every label, and close the loop.

One member of the `fraud-monitor` consumer group on `predictions` and `labels`. The loop,
in the shape of the stream processor's:

    poll → parse and keep (MonitorState: dedupe by transaction) → advance the event-time
    watermark → evaluate the windows it closed (Evaluator) → every few seconds, checkpoint
    the state with its offsets, then commit the offsets to Kafka.

It never blocks scoring: it reads the log the scoring service already writes. What it
knows is on its page and `/metrics` (port `monitor_port`, 9109), and, with `--json`, in one
summary at exit. A poison record (not a Prediction or Label of the schema) is counted,
logged and skipped: the monitor is a reader of the log, not its owner.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import pandas as pd
import typer
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from core.events import LABELS_TOPIC, PREDICTIONS_TOPIC, Label, Prediction
from core.settings import Settings, get_settings
from monitoring.evaluator import Evaluator, Hook
from monitoring.metrics import MonitorMetrics
from monitoring.state import MonitorState
from pipelines import kafka_clients

log = logging.getLogger(__name__)

GROUP_ID = "fraud-monitor"
TOPICS = (PREDICTIONS_TOPIC, LABELS_TOPIC)


@dataclass
class MonitorSummary:
    consumed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPICS, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPICS, 0))
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPICS, 0))
    seconds: float = 0.0
    busy_seconds: float = 0.0  # first record to the last record or window: the work itself
    windows_evaluated: int = 0
    resumed_from_checkpoint: bool = False

    @property
    def events_per_second(self) -> float:
        return sum(self.consumed.values()) / self.busy_seconds if self.busy_seconds else 0.0


def _key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class Monitor:
    def __init__(
        self,
        settings: Settings,
        group_id: str = GROUP_ID,
        metrics: MonitorMetrics | None = None,
        hooks: dict[str, Hook] | None = None,
        checkpoint_interval_s: float = 5.0,
        max_records: int = 5_000,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or MonitorMetrics()
        self.checkpoint_interval_s = checkpoint_interval_s
        self.max_records = max_records
        self.summary = MonitorSummary()
        self._stopping = threading.Event()
        self.state = MonitorState.load(settings.monitor_dir, settings.monitor_retention_days)
        self.summary.resumed_from_checkpoint = bool(self.state.offsets)
        self.evaluator = Evaluator(settings, self.state, self.metrics, hooks or {})
        self.evaluator.restore(self.state.evaluator.get("evaluator", {}))
        # The event time each predictions partition has reached: the watermark is their minimum.
        self.partition_time: dict[str, int] = {
            k: int(v) for k, v in self.state.evaluator.get("partition_time", {}).items()
        }
        self.earliest_us: int | None = self.state.evaluator.get("earliest_us")
        from models import registry

        registry.connect(settings)  # MLflow's imports and store now, not in the first window
        kafka_clients.wait_until_ready(settings.kafka_bootstrap)
        kafka_clients.ensure_topics(settings)
        self.consumer: KafkaConsumer = kafka_clients.consumer(settings, group_id, ())
        self.lock = threading.Lock()  # the page's snapshot reads what the loop writes

    # --- records ---------------------------------------------------------------------------
    def _process(self, record: Any) -> None:
        topic = record.topic
        try:
            if topic == PREDICTIONS_TOPIC:
                prediction = Prediction.model_validate_json(record.value)
                kept = self.state.add_prediction(prediction)
                event_us = int(prediction.event_time.timestamp() * 1e6)
                key = f"{topic}:{record.partition}"
                if event_us > self.partition_time.get(key, 0):
                    self.partition_time[key] = event_us
                if self.earliest_us is None or event_us < self.earliest_us:
                    self.earliest_us = event_us
            else:
                kept = self.state.add_label(Label.model_validate_json(record.value))
        except (ValidationError, ValueError) as error:
            self.summary.invalid[topic] += 1
            self.metrics.records.labels(topic, "invalid").inc()
            log.warning("skipped %s[%d]@%d: %s", topic, record.partition, record.offset, str(error)[:200])
            return
        outcome = "kept" if kept else "duplicate"
        if not kept:
            self.summary.duplicates[topic] += 1
        self.metrics.records.labels(topic, outcome).inc()

    def earliest(self) -> pd.Timestamp | None:
        return None if self.earliest_us is None else pd.Timestamp(self.earliest_us * 1000, tz="UTC")

    def watermark(self) -> pd.Timestamp | None:
        """The event time every predictions partition that delivered anything has reached."""
        if not self.partition_time:
            return None
        return pd.Timestamp(min(self.partition_time.values()) * 1000, tz="UTC")

    # --- the loop ----------------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        self._stopping.set()

    def run(self, idle_exit_s: float | None = None, max_seconds: float | None = None) -> MonitorSummary:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        rebalance = kafka_clients.RebalanceNotes()
        self.consumer.subscribe(list(TOPICS), listener=rebalance)
        started = last_record = last_checkpoint = time.monotonic()
        consumed_any = False
        first_work: float | None = None
        last_work = started
        try:
            while not self._stopping.is_set():
                polled = self.consumer.poll(timeout_ms=100, max_records=self.max_records)
                if rebalance.assigned:
                    self._resume(rebalance.assigned)
                    moved = set(rebalance.assigned)
                    polled = {tp: records for tp, records in polled.items() if tp not in moved}
                    rebalance.assigned, rebalance.revoked = [], []
                now = time.monotonic()
                with self.lock:
                    for tp, records in polled.items():
                        self.summary.consumed[tp.topic] += len(records)
                        for record in records:
                            self._process(record)
                        self.state.offsets[_key(tp)] = records[-1].offset + 1
                    if polled:
                        last_record, consumed_any = now, True
                        first_work = now if first_work is None else first_work
                    if polled or self.evaluator.advance(self.watermark(), self.earliest(), max_windows=1):
                        last_work = time.monotonic()
                if now - last_checkpoint >= self.checkpoint_interval_s:
                    self._checkpoint()
                    last_checkpoint = now
                idle = now - last_record >= idle_exit_s if idle_exit_s is not None else False
                if idle and consumed_any and not self.evaluator.pending(self.watermark(), self.earliest()):
                    break
                if idle_exit_s is not None and not consumed_any and now - started >= idle_exit_s + 10:
                    break  # nothing at all to read (the group join takes a few seconds)
                if max_seconds is not None and now - started >= max_seconds:
                    break
            self._checkpoint()
        finally:
            self.summary.seconds = time.monotonic() - started
            self.summary.busy_seconds = last_work - first_work if first_work is not None else 0.0
            self.summary.windows_evaluated = self.evaluator.windows_evaluated
            self.consumer.close()
            self.evaluator.worker.close()  # after leaving the group: it may take seconds
        return self.summary

    def _resume(self, assigned: list[TopicPartition]) -> None:
        """Start each partition where the checkpoint stopped, not where Kafka's commit says.

        A partition the checkpoint does not know (a first start, or var/monitor/ removed) is
        read from its beginning: the state is rebuilt from the log, never assumed.
        """
        for tp in assigned:
            offset = self.state.offsets.get(_key(tp))
            if offset is not None:
                self.consumer.seek(tp, offset)
            else:
                self.consumer.seek_to_beginning(tp)
        log.info("monitor assigned %s", ", ".join(sorted(_key(tp) for tp in assigned)))

    def _checkpoint(self) -> None:
        from kafka.structs import OffsetAndMetadata

        with self.lock:
            self.state.evaluator = {
                "evaluator": self.evaluator.state_dict(),
                "partition_time": self.partition_time,
                "earliest_us": self.earliest_us,
            }
            self.state.save()
            owned = {_key(tp): tp for tp in self.consumer.assignment()}
            offsets = {
                owned[k]: OffsetAndMetadata(v, "", -1) for k, v in self.state.offsets.items() if k in owned
            }
        try:
            if offsets:
                self.consumer.commit(offsets)  # for lag dashboards; a restart trusts the checkpoint
            for tp in owned.values():
                high = self.consumer.highwater(tp)  # Tansu's end_offsets answer is wrong
                if high is not None:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                        max(0, high - self.consumer.position(tp))
                    )
        except KafkaError as error:
            # A rebalance under way (a busy machine can miss heartbeats): the commit is refused
            # or a partition was just revoked. The checkpoint above already holds the offsets.
            log.warning("offset commit skipped (%s): %s", type(error).__name__, error)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return self.evaluator.snapshot()

    def summary_dict(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            **asdict(self.summary),
            "events_per_second": round(self.summary.events_per_second, 1),
            "watermark": None if self.watermark() is None else str(self.watermark()),
            "drift": {
                k: snap["drift"][k] for k in ("alarm", "alarm_since", "alarmed_features", "drifted_features")
            },
            "champion": snap["champion"],
            "counts": snap["counts"],
        }


def cli(
    port: Annotated[
        int, typer.Option(help="Serve the page and /metrics here (0 = any free port, -1 = off).")
    ] = -2,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without a record (tests, scripts).")
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group.")] = GROUP_ID,
    checkpoint_interval: Annotated[float, typer.Option(help="Seconds between checkpoints.")] = 5.0,
    max_records: Annotated[int, typer.Option(help="Largest poll, in records.")] = 5_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Watch every decision and label: drift, skew, delayed-label performance, canary guard, rollback.

    Reads `predictions` and `labels` from their committed position (a restart resumes from
    its checkpoint under var/monitor/), evaluates each event-time window and serves a page
    and /metrics on --port (default FRAUD_MONITOR_PORT, 9109).

    Example: fraudctl monitor --idle-exit 15 --json
    """
    from rich.console import Console

    from monitoring.loop import default_hooks

    settings = get_settings()
    monitor = Monitor(
        settings, group, hooks=default_hooks(settings), checkpoint_interval_s=checkpoint_interval
    )
    port = settings.monitor_port if port == -2 else port
    if port >= 0:
        from monitoring.http import start_monitor_server

        server, _ = start_monitor_server(
            port, monitor.metrics.registry, monitor.snapshot, settings.reports_dir
        )
        Console(stderr=True).print(f"monitor page on http://127.0.0.1:{server.server_port}/")
    summary = monitor.run(idle_exit_s=idle_exit)
    result = monitor.summary_dict()
    if as_json:
        print(json.dumps(result, default=str))  # noqa: T201
        return
    Console(highlight=False).print(
        f"consumed {summary.consumed[PREDICTIONS_TOPIC]:,} predictions and "
        f"{summary.consumed[LABELS_TOPIC]:,} labels in {summary.seconds:.1f} s "
        f"({summary.events_per_second:,.0f}/s); "
        f"{summary.windows_evaluated} windows evaluated; drift alarm: "
        f"{', '.join(result['drift']['alarmed_features']) or 'none'}"
    )
