"""The prediction writer's spool under crashes: "a crash mid-replay duplicates, never loses".

Real parts: the writer process, started and restarted exactly as the scoring service does it
(`PredictionLog._start_writer`, which its supervisor calls again when the writer dies), records
handed over through the service's queue, the spool on disk, and the embedded Tansu broker
(stopped, so that the writer spools; started again on the same address, so that it replays).
No model: a record names no challenger, so the writer does no shadow scoring.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from core.events import PREDICTIONS_TOPIC
from core.features import MODEL_FEATURES
from core.settings import Settings
from monitoring.metrics import ScoringMetrics
from pipelines.broker import EmbeddedBroker
from pipelines.kafka_clients import topic_partitions
from services.scoring.prediction_log import PredictionLog
from services.scoring.prediction_writer import SEGMENT_BYTES

pytestmark = pytest.mark.slow

# ~1.2 KB a record: 20,000 fill 6 segments, and replaying them takes ~3.5 s on this machine
# (kafka-python sends ~6,000 records/s), long enough to kill the writer in the middle.
RECORDS = 20_000
HANDOVER_BATCH = 500  # records per hand-over, as the service's 20 ms flushes under load
KILL_AT = RECORDS // 5  # records on the topic when the writer is killed


def prediction(i: int) -> dict[str, Any]:
    """A prediction record shaped like the service's (DESIGN.md section 2)."""
    return {
        "transaction_id": f"tx-{i:06d}",
        "card_id": f"card-{i % 400:03d}",
        "event_time": "2026-02-01T12:00:00+00:00",
        "scored_at": "2026-02-01T12:00:00.004+00:00",
        "score": (i % 1000) / 1000,
        "decision": "approve",
        "served_by": "champion",
        "model_version": "1",
        "challenger_version": None,
        "challenger_score": None,
        "rule_hits": [],
        "features": {name: round(0.37 * (i % 97) + k, 6) for k, name in enumerate(MODEL_FEATURES)},
        "latency_ms": {"total": 1.1, "features": 0.3, "model": 0.2},
    }


def refused_address(base: Settings) -> str:
    """A free local address that refuses connections: where a broker was and will be again."""
    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker:
        return broker.bootstrap


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, log: PredictionLog) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert log.process.is_alive(), f"the writer died (exit {log.process.exitcode}) waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {log.counts()}"
        time.sleep(0.1)


@contextmanager
def prediction_log(settings: Settings) -> Iterator[PredictionLog]:
    """The service's prediction log with its writer process, without the service around it."""
    log = PredictionLog(settings, ScoringMetrics())
    log._start_writer()
    try:
        yield log
    finally:
        if log.process.is_alive():
            log.process.kill()
            log.process.join()


def stop_writer(log: PredictionLog) -> None:
    """What the service does on shutdown: hand over the end marker, the writer exits cleanly."""
    log.batches.put(None)
    log.process.join(30)
    assert log.process.exitcode == 0, f"the writer did not stop cleanly: {log.process.exitcode}"


def hand_over(log: PredictionLog, records: list[dict[str, Any]]) -> None:
    for start in range(0, len(records), HANDOVER_BATCH):
        for record in records[start : start + HANDOVER_BATCH]:
            log.submit(record, None)
        log.flush()


def spooled_ids(settings: Settings) -> list[str]:
    return [
        json.loads(line)["transaction_id"]
        for segment in sorted(settings.spool_dir.glob("*.jsonl"))
        for line in segment.read_bytes().splitlines()
    ]


class PredictionsTopic:
    """Reads the whole `predictions` topic as it fills; counts what is on it by highwater.

    `consumer.highwater()`, not `end_offsets()`: Tansu's end offset is that of the last
    batch's first record, plus 1 (see the README). Highwater comes with each fetch, so the
    reader polls all the time.
    """

    def __init__(self, settings: Settings) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        partitions = topic_partitions(settings)[PREDICTIONS_TOPIC]
        self.partitions = [TopicPartition(PREDICTIONS_TOPIC, p) for p in range(partitions)]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning()
        self.ids: list[str] = []

    def poll(self) -> int:
        """Read what arrived; returns how many records the topic holds (sum of highwaters)."""
        for records in self.consumer.poll(timeout_ms=50, max_records=5_000).values():
            self.ids.extend(json.loads(record.value)["transaction_id"] for record in records)
        return self.on_topic()

    def on_topic(self) -> int:
        return sum(self.consumer.highwater(tp) or 0 for tp in self.partitions)

    def settle(self, quiet_s: float = 1.5, timeout_s: float = 30.0) -> int:
        """Poll until the record count has not moved for `quiet_s`: nothing is in flight."""
        deadline = time.monotonic() + timeout_s
        count, since = self.poll(), time.monotonic()
        while time.monotonic() - since < quiet_s:
            assert time.monotonic() < deadline, "the topic never stopped growing"
            if (now := self.poll()) != count:
                count, since = now, time.monotonic()
        return count

    def read_to_end(self, timeout_s: float = 30.0) -> list[str]:
        """Every record the topic holds, from its start, in arrival order per partition."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            caught_up = [self.consumer.position(tp) == self.consumer.highwater(tp) for tp in self.partitions]
            if all(caught_up):
                return self.ids
            assert time.monotonic() < deadline, "the topic was not read to its end"

    def close(self) -> None:
        self.consumer.close()


def test_a_writer_killed_mid_replay_duplicates_but_loses_no_spooled_record(tmp_path: Path) -> None:
    base = Settings(profile="embedded", var_dir=tmp_path / "var")
    settings = base.model_copy(update={"kafka_bootstrap": refused_address(base)})
    sent = [prediction(i) for i in range(RECORDS)]
    with prediction_log(settings) as log:
        # 1. The broker is down: everything goes to the spool.
        hand_over(log, sent)
        wait_for(lambda: log.counts()["spooled"] == RECORDS, 60, "the spool", log)
        stop_writer(log)
        spool = spooled_ids(settings)
        assert spool == [r["transaction_id"] for r in sent], "not every record was spooled, in order"
        segments = sorted(settings.spool_dir.glob("*.jsonl"))
        assert len(segments) >= 4 and segments[0].stat().st_size >= SEGMENT_BYTES, "want several segments"

        with EmbeddedBroker(settings, bootstrap=settings.kafka_bootstrap):
            # 2. The broker is back: a writer starts, replays, and is killed in the middle.
            topic = PredictionsTopic(settings)
            try:
                log._start_writer()
                deadline = time.monotonic() + 120
                while topic.poll() < KILL_AT:
                    assert log.process.is_alive(), f"writer exited before the kill: {log.process.exitcode}"
                    assert time.monotonic() < deadline, "the replay never started"
                os.kill(log.process.pid, signal.SIGKILL)
                log.process.join()
                assert log.process.exitcode == -signal.SIGKILL
                before_restart = topic.settle()
                left_on_disk = spooled_ids(settings)
                # Not vacuous: the kill landed mid-replay, some records sent and some not.
                assert 0 < before_restart < RECORDS, f"{before_restart} of {RECORDS} on the topic at the kill"
                assert left_on_disk, "the spool was empty at the kill: the replay had finished"
                assert set(spool) - set(topic.ids), "every record was on the topic already at the kill"

                # 3. Restarted as the service's supervisor restarts it: it replays the rest.
                log._start_writer()
                wait_for(lambda: not list(settings.spool_dir.glob("*.jsonl")), 120, "the replay", log)
                received = topic.read_to_end()
            finally:
                topic.close()
            stop_writer(log)
    assert set(received) == set(spool), (
        f"lost {len(set(spool) - set(received))}, unexpected {len(set(received) - set(spool))}"
    )
    duplicates = len(received) - len(set(received))
    print(
        f"{before_restart} of {RECORDS} on the topic at the kill, {len(left_on_disk)} still spooled; "
        f"after the restart all {RECORDS} there, {duplicates} twice"
    )


def test_a_record_a_crash_left_half_written_costs_only_itself(tmp_path: Path) -> None:
    """A spool segment whose last line was cut off, then more records appended, then replayed.

    The torn line is written by the test (a fake, on purpose): it is what a writer killed
    inside `Spool.append`'s write, or out of disk there, leaves behind. No SIGKILL can be
    timed to land inside one write() call of a few KB, so the crash itself cannot be caused.
    """
    base = Settings(profile="embedded", var_dir=tmp_path / "var")
    settings = base.model_copy(update={"kafka_bootstrap": refused_address(base)})
    first, later = [prediction(i) for i in range(100)], [prediction(i) for i in range(100, 150)]
    with prediction_log(settings) as log:
        hand_over(log, first)
        wait_for(lambda: log.counts()["spooled"] == len(first), 60, "the spool", log)
        stop_writer(log)
        (newest,) = settings.spool_dir.glob("*.jsonl")
        data = newest.read_bytes()
        last_line = data[data.rstrip(b"\n").rfind(b"\n") + 1 :]
        newest.write_bytes(data[: -len(last_line) // 2])  # the last record, half of it on disk
        torn = first[-1]["transaction_id"]

        log._start_writer()  # broker still down: the later records are appended to that segment
        hand_over(log, later)
        wait_for(lambda: log.counts()["spooled"] == len(first) + len(later), 60, "the spool", log)
        stop_writer(log)
        with EmbeddedBroker(settings, bootstrap=settings.kafka_bootstrap):
            topic = PredictionsTopic(settings)
            try:
                log._start_writer()
                wait_for(lambda: not list(settings.spool_dir.glob("*.jsonl")), 60, "the replay", log)
                received = topic.read_to_end()
            finally:
                topic.close()
            stop_writer(log)
    expected = {r["transaction_id"] for r in first + later} - {torn}
    assert sorted(received) == sorted(expected), f"lost {sorted(expected - set(received))}"
    assert log.counts()["dropped"] == 1, "the torn record is counted as dropped, not lost silently"
