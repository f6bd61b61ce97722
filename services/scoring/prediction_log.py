"""The prediction log: every decision, with the vector scored, to the `predictions` topic.

A request only puts its record on an in-memory queue; one worker thread does the rest,
off the hot path: it scores the batch with the challenger (the shadow score, one ONNX
call per batch), encodes the records and sends them with kafka-python.

When the broker does not take them, records go to a spool on disk (JSON lines in
numbered segment files) and, once anything is spooled, every later record goes there too,
so the log keeps its order. Every second the worker tries to send the spool, oldest
segment first, and deletes a segment only after the broker acknowledged all of it: a
crash mid-replay sends some records twice (consumers dedupe by `transaction_id`), never
loses one. The spool is capped at `spool_max_bytes`; past the cap records are dropped,
counted and logged at ERROR: bounded disk beats a full disk taking the service down.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kafka.errors import KafkaError

from core.events import PREDICTIONS_TOPIC
from core.settings import Settings
from monitoring.metrics import ScoringMetrics
from pipelines import kafka_clients
from services.scoring.models import ServingModel

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
BATCH = 500  # records sent per round
SEND_TIMEOUT_S = 5.0
RETRY_EVERY_S = 1.0
QUEUE_LIMIT = 100_000  # in memory; beyond it the request path spools nothing and drops


@dataclass
class PendingRecord:
    record: dict[str, Any]  # the Prediction fields, but challenger_score and features
    vector: np.ndarray
    shadow: ServingModel | None  # the challenger of the request's model set


class Spool:
    """Append-only JSON-lines segments; read oldest first; a segment is deleted once sent."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.records = sum(1 for s in self.segments() for _ in s.open("rb"))
        self.bytes = sum(s.stat().st_size for s in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def append(self, lines: list[bytes]) -> int:
        """Append what fits under the cap; returns how many lines were dropped."""
        segments = self.segments()
        target = segments[-1] if segments and segments[-1].stat().st_size < SEGMENT_BYTES else None
        if target is None:
            number = int(segments[-1].stem) + 1 if segments else 0
            target = self.folder / f"{number:012d}.jsonl"
        kept = []
        for line in lines:
            if self.bytes + len(line) + 1 > self.max_bytes:
                break
            kept.append(line)
            self.bytes += len(line) + 1
        if kept:
            with target.open("ab") as out:
                out.write(b"\n".join(kept) + b"\n")
            self.records += len(kept)
        return len(lines) - len(kept)

    def oldest(self) -> tuple[Path, list[bytes]] | None:
        segments = self.segments()
        if not segments:
            return None
        return segments[0], segments[0].read_bytes().splitlines()

    def remove(self, segment: Path, records: int) -> None:
        self.bytes -= segment.stat().st_size
        segment.unlink()
        self.records -= records


class PredictionLog:
    def __init__(self, settings: Settings, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.queue: queue.Queue[PendingRecord] = queue.Queue(maxsize=QUEUE_LIMIT)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        self._producer: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._last_attempt = 0.0
        self.broker_up = True  # until a send says otherwise

    # --- request path ---------------------------------------------------------------
    def submit(self, pending: PendingRecord) -> None:
        try:
            self.queue.put_nowait(pending)
        except queue.Full:
            self.metrics.predictions_logged.labels("dropped").inc()

    # --- worker ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send or spool everything queued, then stop."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self._producer is not None:
            self._producer.close(timeout=2)

    def _batches(self) -> Iterator[list[PendingRecord]]:
        while not (self._stop.is_set() and self.queue.empty()):
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                yield []
                continue
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            yield batch

    def _run(self) -> None:
        for batch in self._batches():
            self.metrics.log_queue.set(self.queue.qsize())
            if batch:
                lines = [json.dumps(self._complete(p), separators=(",", ":")).encode() for p in batch]
                keys = [p.record["transaction_id"] for p in batch]
                if self.spool.records or not self._send(list(zip(keys, lines, strict=True))):
                    self._to_spool(lines)
                else:
                    self.metrics.predictions_logged.labels("sent").inc(len(lines))
            if self.spool.records and time.monotonic() - self._last_attempt >= RETRY_EVERY_S:
                self._replay()

    @staticmethod
    def _complete(pending: PendingRecord) -> dict[str, Any]:
        record = pending.record
        if pending.shadow is not None:
            # One row at a time here; the batch is seldom more than a few records.
            record["challenger_version"] = pending.shadow.version
            record["challenger_score"] = float(pending.shadow.scorer.score(pending.vector[None, :])[0])
        return record

    def _to_spool(self, lines: list[bytes]) -> None:
        dropped = self.spool.append(lines)
        self.metrics.predictions_logged.labels("spooled").inc(len(lines) - dropped)
        if dropped:
            self.metrics.predictions_logged.labels("dropped").inc(dropped)
            log.error("prediction spool full (%d bytes): dropped %d records", self.spool.max_bytes, dropped)
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.spool_backlog.set(self.spool.records)
        self.metrics.spool_bytes.set(self.spool.bytes)

    def _replay(self) -> None:
        self._last_attempt = time.monotonic()
        if self._producer is None and not self._reachable():
            return  # the broker is still down: do not even read the spool
        while (oldest := self.spool.oldest()) is not None:
            segment, lines = oldest
            keyed = [(json.loads(line)["transaction_id"], line) for line in lines]
            if not self._send(keyed):
                return
            self.spool.remove(segment, len(lines))
            self.metrics.predictions_logged.labels("replayed").inc(len(lines))
            self._gauges()
            log.info("replayed %d spooled predictions (%d left)", len(lines), self.spool.records)

    def _reachable(self) -> bool:
        # kafka-python's constructor retries a dead bootstrap address with growing backoff
        # for many seconds; a plain connect tells in milliseconds.
        try:
            socket.create_connection(kafka_clients.host_port(self.settings.kafka_bootstrap), 0.5).close()
            return True
        except OSError:
            return False

    def _send(self, keyed: list[tuple[str, bytes]]) -> bool:
        """Send and wait for the acknowledgements; False if the broker did not take them all."""
        try:
            if self._producer is None:
                if not self._reachable():
                    raise OSError(f"nothing listens at {self.settings.kafka_bootstrap}")
                self._producer = kafka_clients.producer(
                    self.settings, max_block_ms=1000, request_timeout_ms=3000, delivery_timeout_ms=4000
                )
            futures = [self._producer.send(PREDICTIONS_TOPIC, key=k, value=v) for k, v in keyed]
            self._producer.flush(timeout=SEND_TIMEOUT_S)
            for future in futures:
                future.get(timeout=0)
        except (KafkaError, AssertionError, OSError) as error:
            if self.broker_up:
                log.warning("predictions topic unavailable (%s): spooling to %s", error, self.spool.folder)
            self.broker_up = False
            if self._producer is not None:
                # Drop what it still buffers: those records are spooled now, and a producer
                # delivering them later as well would only add duplicates.
                self._producer.close(timeout=0)
                self._producer = None
            return False
        if not self.broker_up:
            log.warning("predictions topic reachable again")
        self.broker_up = True
        return True
