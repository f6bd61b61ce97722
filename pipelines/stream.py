"""`fraudctl stream`: the stream feature processor (Kafka → feature logic → Feast).

One loop, in the shape of every Kafka consumer worth copying:

    poll a micro-batch (≤ max_records, ≤ poll timeout)
    → route each record to the task of its partition (`pipelines.stream_tasks`)
    → send the card tasks' envelopes to the internal topics
    → write the batch's latest feature rows online (Feast)
    → every commit interval: flush the producer, write offline parts, commit offsets

Delivery is at least once; results are idempotent. A redelivered transaction is known
by its id and skipped; an online row written twice has the same value; an offline
part whose offsets were not committed is deleted and rewritten (`feature_writer`).

State on restart: every task is a fold of its partitions' records, so a task that gets
a partition (at start or in a rebalance) rebuilds by reading that partition from its
first offset to the committed one, writing nothing. No second copy of the state can
disagree with the log. The price is restart time proportional to what the topics
retain (35 days cover every window); the README discusses the trade-off.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from kafka import KafkaConsumer, TopicPartition
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import OffsetAndMetadata
from prometheus_client import start_http_server
from rich.console import Console
from rich.table import Table

from core.events import DEAD_LETTER_TOPIC, LABELS_TOPIC, TRANSACTIONS_TOPIC
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, Sink
from core.settings import Settings, get_settings
from monitoring.metrics import StreamMetrics
from pipelines import kafka_clients
from pipelines.stream_tasks import (
    DEVICE_EVENTS_TOPIC,
    LABELS_BY_CARD_TOPIC,
    MERCHANT_EVENTS_TOPIC,
    CardTask,
    DeviceTask,
    MerchantTask,
    TaskCounts,
    parse_label,
    parse_transaction,
)

log = logging.getLogger(__name__)

INPUT_TOPICS = (
    TRANSACTIONS_TOPIC,
    LABELS_TOPIC,
    LABELS_BY_CARD_TOPIC,
    MERCHANT_EVENTS_TOPIC,
    DEVICE_EVENTS_TOPIC,
)
GROUP_ID = "fraud-stream"


@dataclass
class StreamSummary:
    """Totals of one run; `consumed` equals the sum of outcomes per kind (see `balanced`)."""

    consumed: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    labels_routed: int = 0
    tasks: TaskCounts = field(default_factory=TaskCounts)
    # labels waiting for their transaction: at the end, received from a partition's
    # previous owner (rebuilt), and passed on to the next owner in a rebalance
    labels_pending: int = 0
    labels_taken_over: int = 0
    labels_handed_over: int = 0
    rows_online: dict[str, int] = field(default_factory=dict)
    rows_offline: dict[str, int] = field(default_factory=dict)
    freshness_seconds: dict[str, list[float]] = field(
        default_factory=lambda: {CARD_VIEW: [], DEVICE_VIEW: []}
    )
    seconds: float = 0.0
    first_consumed_at: float | None = None  # wall clock (epoch s) of the first record
    last_written_at: float | None = None  # ... and of the last online write

    def as_dict(self) -> dict[str, Any]:
        """Totals and freshness percentiles, for `--json` and the benchmark."""
        record: dict[str, Any] = {
            "consumed": self.consumed,
            "dead_lettered": self.dead_lettered,
            "labels_routed": self.labels_routed,
            **vars(self.tasks),
            "labels_pending": self.labels_pending,
            "rows_online": self.rows_online,
            "rows_offline": self.rows_offline,
            "seconds": round(self.seconds, 3),
            "first_consumed_at": self.first_consumed_at,
            "last_written_at": self.last_written_at,
            "balanced": self.balanced(),
        }
        for view, samples in self.freshness_seconds.items():
            for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                value = percentile(samples, q)
                record[f"freshness_{view}_{name}_seconds"] = None if value is None else round(value, 4)
        return record

    def balanced(self) -> bool:
        """Nothing dropped silently: every transaction and label consumed has an outcome."""
        txns_ok = self.consumed.get(TRANSACTIONS_TOPIC, 0) == (
            self.tasks.transactions_applied
            + self.tasks.transactions_duplicate
            + self.dead_lettered.get(TRANSACTIONS_TOPIC, 0)
        )
        labels_ok = self.consumed.get(LABELS_TOPIC, 0) == self.labels_routed + self.dead_lettered.get(
            LABELS_TOPIC, 0
        )
        routed_ok = self.consumed.get(LABELS_BY_CARD_TOPIC, 0) + self.labels_taken_over == (
            self.tasks.labels_forwarded
            + self.tasks.labels_unmatched
            + self.labels_pending
            + self.labels_handed_over
        )
        return txns_ok and labels_ok and routed_ok


def _add(totals: dict[str, int], more: dict[str, int]) -> None:
    for key, n in more.items():
        totals[key] = totals.get(key, 0) + n


class StreamProcessor:
    """One member of the `fraud-stream` consumer group; run several to split the partitions."""

    def __init__(
        self,
        settings: Settings,
        group_id: str = GROUP_ID,
        max_records: int = 2_000,
        poll_timeout_ms: int = 50,
        commit_interval_s: float = 5.0,
        metrics: StreamMetrics | None = None,
    ) -> None:
        from feature_repo.store import ensure_definitions, open_store
        from pipelines.feature_writer import FeatureWriter

        self.settings = settings
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.commit_interval_s = commit_interval_s
        self.metrics = metrics or StreamMetrics()
        self.summary = StreamSummary()
        self._stopping = threading.Event()

        kafka_clients.wait_until_ready(settings.kafka_bootstrap)
        kafka_clients.ensure_topics(settings)
        store = open_store(settings)
        ensure_definitions(store, settings)  # a fresh store needs the views to write into
        self.writer = FeatureWriter(store, settings)
        self.producer = kafka_clients.producer(settings)
        self.consumer: KafkaConsumer = kafka_clients.consumer(
            settings, group_id, (), partition_assignment_strategy=(RangePartitionAssignor,)
        )
        self.partitions = kafka_clients.topic_partitions(settings)

        self.card_tasks: dict[int, CardTask] = {}
        self.merchant_tasks: dict[int, MerchantTask] = {}
        self.device_tasks: dict[int, DeviceTask] = {}
        self.positions: dict[TopicPartition, int] = {}  # next offset to commit
        self.start_offsets: dict[tuple[str, int], int] = {}  # of the uncommitted interval
        self._card_published_ms: list[int] = []

    # --- routing -------------------------------------------------------------------
    def _partition_of(self, topic: str) -> Any:
        n = self.partitions[topic]
        return lambda key: kafka_clients.partition_for(key, n)

    def _forward(self, topic: str, partition: int, value: bytes) -> None:
        self.producer.send(topic, value=value, partition=partition)

    def _dead_letter(self, record: Any, error: Exception) -> None:
        reason = str(error).replace("\n", " ")[:2000]
        headers = [
            ("error", reason.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        self.producer.send(DEAD_LETTER_TOPIC, value=record.value, key=record.key, headers=headers)
        _add(self.summary.dead_lettered, {record.topic: 1})
        self.metrics.outcomes.labels(record.topic, "dead_lettered").inc()
        log.warning(
            "dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:200]
        )

    def _process(self, record: Any) -> None:
        topic, p = record.topic, record.partition
        if topic == TRANSACTIONS_TOPIC:
            try:
                task = self.card_tasks[p]
                if task.on_transaction(parse_transaction(record.value), record.timestamp):
                    self._card_published_ms.append(record.timestamp)
                    self.metrics.outcomes.labels(topic, "applied").inc()
                else:
                    self.metrics.outcomes.labels(topic, "duplicate").inc()
            except ValueError as error:  # schema violations and out-of-order events
                self._dead_letter(record, error)
        elif topic == LABELS_TOPIC:
            try:
                label = parse_label(record.value)
            except ValueError as error:
                self._dead_letter(record, error)
            else:
                partition = kafka_clients.partition_for(label.card_id, self.partitions[LABELS_BY_CARD_TOPIC])
                self.producer.send(
                    LABELS_BY_CARD_TOPIC, key=label.card_id, value=record.value, partition=partition
                )
                self.summary.labels_routed += 1
                self.metrics.outcomes.labels(topic, "routed").inc()
        elif topic == LABELS_BY_CARD_TOPIC:
            self.card_tasks[p].on_label(parse_label(record.value))
        elif topic == MERCHANT_EVENTS_TOPIC:
            self.merchant_tasks[p].on_envelope(record.value)
        else:
            self.device_tasks[p].on_envelope(record.value)

    # --- the loop --------------------------------------------------------------------
    def stop(self, *_: Any) -> None:
        """Finish the batch in hand, commit and return from `run` (the SIGTERM handler)."""
        self._stopping.set()

    def run(self, idle_exit_s: float | None = None, max_seconds: float | None = None) -> StreamSummary:
        """Process until stopped, or until nothing arrived for `idle_exit_s` seconds."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        rebalance = kafka_clients.RebalanceNotes()
        self.consumer.subscribe(list(INPUT_TOPICS), listener=rebalance)
        started = last_record = last_commit = time.monotonic()
        try:
            while not self._stopping.is_set():
                polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
                # Before any record is processed or anything committed: drop what was revoked
                # (never write a part for a partition someone else may own now), build what came.
                if rebalance.revoked:
                    self.on_revoked(rebalance.revoked)
                    rebalance.revoked = []
                if rebalance.assigned:
                    self.on_assigned(rebalance.assigned)
                    # on_assigned moved them back to their committed offsets: what this poll
                    # fetched for them may start beyond that, and is fetched again.
                    moved = set(rebalance.assigned)
                    polled = {tp: records for tp, records in polled.items() if tp not in moved}
                    rebalance.assigned = []
                now = time.monotonic()
                for tp, records in polled.items():
                    self.metrics.consumed.labels(tp.topic).inc(len(records))
                    _add(self.summary.consumed, {tp.topic: len(records)})
                    for record in records:
                        self._process(record)
                    self.positions[tp] = records[-1].offset + 1
                if polled:
                    last_record = now
                    if self.summary.first_consumed_at is None:
                        self.summary.first_consumed_at = time.time()
                self._end_batch()
                if now - last_commit >= self.commit_interval_s:
                    self._commit()
                    self._update_lag()
                    last_commit = now
                if idle_exit_s is not None and self.positions and now - last_record >= idle_exit_s:
                    break
                if max_seconds is not None and now - started >= max_seconds:
                    break
            self._end_batch()
            self._commit()
        finally:
            self.summary.seconds = time.monotonic() - started
            self._collect_task_counts(self.card_tasks.values())
            self.summary.labels_pending = sum(t.pending_count() for t in self.card_tasks.values())
            self.consumer.close()
            self.producer.close()
        return self.summary

    def _end_batch(self) -> None:
        for task in self.card_tasks.values():
            task.drain(
                self._forward, self.partitions[MERCHANT_EVENTS_TOPIC], self.partitions[DEVICE_EVENTS_TOPIC]
            )
        with self.metrics.online_write_seconds.time():
            written = self.writer.write_online()
        now_ms = time.time() * 1000
        fresh = {CARD_VIEW: self._card_published_ms}
        fresh[DEVICE_VIEW] = [ms for task in self.device_tasks.values() for ms in task.published_ms]
        for view, published in fresh.items():
            histogram, samples = self.metrics.freshness.labels(view), self.summary.freshness_seconds[view]
            for ms in published:
                seconds = (now_ms - ms) / 1000
                histogram.observe(seconds)
                samples.append(seconds)
            published.clear()
        for device_task in self.device_tasks.values():
            device_task.published_ms.clear()
        for view, n in written.items():
            self.metrics.rows_written.labels(view, "online").inc(n)
        if written:
            self.summary.last_written_at = time.time()
        _add(self.summary.rows_online, written)

    def _commit(self) -> None:
        """Make the interval durable: internal records, offline parts, then offsets."""
        self.producer.flush()
        written = self.writer.write_offline(self.start_offsets)
        for view, n in written.items():
            self.metrics.rows_written.labels(view, "offline").inc(n)
        _add(self.summary.rows_offline, written)
        owned = set(self.consumer.assignment())
        offsets = {tp: OffsetAndMetadata(pos, "", -1) for tp, pos in self.positions.items() if tp in owned}
        if offsets:
            self.consumer.commit(offsets)
        for tp, pos in offsets.items():
            self.start_offsets[(tp.topic, tp.partition)] = pos.offset

    def _update_lag(self) -> None:
        for tp in self.consumer.assignment():
            # highwater() comes with fetch responses (Tansu's end_offsets answer is wrong).
            high = self.consumer.highwater(tp)
            if high is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, high - self.consumer.position(tp))
                )

    def _collect_task_counts(self, tasks: Iterable[CardTask]) -> None:
        total = self.summary.tasks
        for task in tasks:
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(task.counts, name))
            task.counts = TaskCounts()  # counted once

    # --- partitions come and go ------------------------------------------------------
    def _new_task(self, topic: str, partition: int, sink: Sink) -> None:
        if topic in (TRANSACTIONS_TOPIC, LABELS_BY_CARD_TOPIC) and partition not in self.card_tasks:
            self.card_tasks[partition] = CardTask(
                partition,
                sink,
                self._partition_of(MERCHANT_EVENTS_TOPIC),
                self._partition_of(DEVICE_EVENTS_TOPIC),
            )
        elif topic == MERCHANT_EVENTS_TOPIC:
            self.merchant_tasks[partition] = MerchantTask(partition, sink)
        elif topic == DEVICE_EVENTS_TOPIC:
            self.device_tasks[partition] = DeviceTask(partition, sink)

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Create and rebuild the tasks of newly assigned partitions."""
        assigned = sorted(assigned, key=lambda tp: (INPUT_TOPICS.index(tp.topic), tp.partition))
        committed = {}
        for tp in assigned:
            committed[tp] = self.consumer.committed(tp) or 0
            # A partition kept across a rebalance keeps its fetch position (kafka-python
            # preserves it), but its task was dropped and is rebuilt to the committed offset
            # only: consume from there, or the records in between are lost to the task.
            self.consumer.seek(tp, committed[tp])
            self.start_offsets[(tp.topic, tp.partition)] = committed[tp]
            self.writer.drop_uncommitted_parts(tp.topic, tp.partition, committed[tp])
            self._new_task(tp.topic, tp.partition, _null_sink)
        # Transactions before labels: a label rebuilt after its transaction is one already sent.
        rebuilt = [tp for tp in assigned if tp.topic != LABELS_TOPIC and committed[tp] > 0]
        if rebuilt:
            started = time.monotonic()
            n = sum(self._rebuild(tp, committed[tp]) for tp in rebuilt)
            log.info(
                "rebuilt %d partitions from %d records in %.1fs", len(rebuilt), n, time.monotonic() - started
            )
        for tp in assigned:
            sink = self.writer.sink_for(tp.topic, tp.partition)
            if tp.topic == TRANSACTIONS_TOPIC:
                task = self.card_tasks[tp.partition]
                task.features.sink = sink
                task.discard_output()
                task.counts = TaskCounts()  # the rebuild's records were counted by their first run
                self.summary.labels_taken_over += task.pending_count()
            elif tp.topic == MERCHANT_EVENTS_TOPIC:
                self.merchant_tasks[tp.partition].features.sink = sink
            elif tp.topic == DEVICE_EVENTS_TOPIC:
                self.device_tasks[tp.partition].features.sink = sink
                self.device_tasks[tp.partition].published_ms.clear()
        self.metrics.assigned.set(len(self.consumer.assignment()))
        log.info("assigned %s", _partitions_text(assigned))

    def _rebuild(self, tp: TopicPartition, end: int) -> int:
        """Fold records [0, end) of a partition into its task, writing and sending nothing."""
        reader = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        reader.assign([tp])
        reader.seek_to_beginning(tp)
        n = 0
        try:
            while reader.position(tp) < end:
                for records in reader.poll(timeout_ms=500, max_records=5_000).values():
                    for record in records:
                        if record.offset >= end:
                            break
                        n += 1
                        self._rebuild_one(record)
        finally:
            reader.close()
        return n

    def _rebuild_one(self, record: Any) -> None:
        topic, p = record.topic, record.partition
        try:
            if topic == TRANSACTIONS_TOPIC:
                self.card_tasks[p].on_transaction(parse_transaction(record.value), record.timestamp)
            elif topic == LABELS_BY_CARD_TOPIC:
                self.card_tasks[p].on_label(parse_label(record.value))
            elif topic == MERCHANT_EVENTS_TOPIC:
                self.merchant_tasks[p].on_envelope(record.value)
            elif topic == DEVICE_EVENTS_TOPIC:
                self.device_tasks[p].on_envelope(record.value)
        except ValueError:
            pass  # dead-lettered when it was first consumed

    def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Let the partitions go with their uncommitted work: the next owner redoes it.

        Committing here is not possible (the group has moved on), and not needed: the
        next owner rebuilds to the committed offset and replays the rest, and every
        output of that replay is idempotent (online rows, re-sent internal events).
        """
        revoked = list(revoked)
        leaving = [
            self.card_tasks[tp.partition]
            for tp in revoked
            if tp.topic == TRANSACTIONS_TOPIC and tp.partition in self.card_tasks
        ]
        self._collect_task_counts(leaving)
        self.summary.labels_handed_over += sum(task.pending_count() for task in leaving)
        for tp in revoked:
            self.positions.pop(tp, None)
            self.writer.forget(tp.topic, tp.partition)
            # The new owner reports this partition's lag; a frozen series here would outlive it.
            try:
                self.metrics.lag.remove(tp.topic, str(tp.partition))
            except KeyError:  # never reported (revoked before the first lag update)
                pass
            if tp.topic == TRANSACTIONS_TOPIC:
                self.card_tasks.pop(tp.partition, None)
            elif tp.topic == MERCHANT_EVENTS_TOPIC:
                self.merchant_tasks.pop(tp.partition, None)
            elif tp.topic == DEVICE_EVENTS_TOPIC:
                self.device_tasks.pop(tp.partition, None)


def _null_sink(view: str, entity_id: str, time_us: int, snapshot: Any) -> None:
    pass


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cli(
    metrics_port: Annotated[
        int, typer.Option(help="Serve Prometheus /metrics on this port (0 = any free port, -1 = off).")
    ] = 9108,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without a record (batch runs, demos).")
    ] = None,
    commit_interval: Annotated[float, typer.Option(help="Seconds between offset commits.")] = 5.0,
    max_records: Annotated[int, typer.Option(help="Largest micro-batch, in records.")] = 2_000,
    group: Annotated[
        str, typer.Option(help="Consumer group; run several processors to share partitions.")
    ] = GROUP_ID,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Keep the online store fresh: consume transactions and labels, update features, write them to Feast.

    Runs until SIGTERM or Ctrl-C (then finishes its batch, commits and exits 0), or with
    --idle-exit until nothing arrives for that long. Start a second one to split the
    partitions.

    Example: fraudctl stream --idle-exit 10
    """
    settings, console = get_settings(), Console(highlight=False)
    processor = StreamProcessor(settings, group, max_records=max_records, commit_interval_s=commit_interval)
    if metrics_port >= 0:
        server, _ = start_http_server(metrics_port, registry=processor.metrics.registry)
        Console(stderr=True).print(f"metrics on http://127.0.0.1:{server.server_port}/metrics")
    summary = processor.run(idle_exit_s=idle_exit)
    if as_json:
        print(json.dumps(summary.as_dict()))  # noqa: T201
    else:
        console.print(summary_table(summary))


def summary_table(summary: StreamSummary) -> Table:
    table = Table(title="stream", show_header=False)
    for topic, n in summary.consumed.items():
        table.add_row(f"consumed {topic}", f"{n:,}")
    t = summary.tasks
    table.add_row(
        "transactions applied / duplicate", f"{t.transactions_applied:,} / {t.transactions_duplicate:,}"
    )
    table.add_row(
        "labels forwarded / unmatched / pending",
        f"{t.labels_forwarded:,} / {t.labels_unmatched:,} / {summary.labels_pending:,}",
    )
    table.add_row("dead-lettered", f"{sum(summary.dead_lettered.values()):,}")
    table.add_row("rows online", ", ".join(f"{v} {n:,}" for v, n in summary.rows_online.items()) or "0")
    table.add_row("rows offline", ", ".join(f"{v} {n:,}" for v, n in summary.rows_offline.items()) or "0")
    for view, samples in summary.freshness_seconds.items():
        p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
        if p50 is not None and p99 is not None:
            table.add_row(f"freshness {view} p50 / p99", f"{p50 * 1000:,.0f} ms / {p99 * 1000:,.0f} ms")
    table.add_row("seconds", f"{summary.seconds:,.1f}")
    table.add_row("counts add up", "yes" if summary.balanced() else "NO")
    return table


def _partitions_text(partitions: list[TopicPartition]) -> str:
    """'transactions 0-3, labels 0,2': one entry per topic, in the order given."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    entries = []
    for topic, numbers in by_topic.items():
        contiguous = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        many = contiguous and len(numbers) > 1
        span = f"{numbers[0]}-{numbers[-1]}" if many else ",".join(map(str, numbers))
        entries.append(f"{topic} {span}")
    return ", ".join(entries) or "nothing"
