"""The prediction writer: a process of its own that sends prediction records to Kafka.

It runs beside the scoring service (`prediction_log.PredictionLog` starts it) because
kafka-python is pure Python: inside the serving process its producer and sender threads
compete with the request path for the GIL, and every hand-over costs a request up to a
switch interval. Measured at 500 req/s on 2 cores: p99 5 ms without the log, over 100 ms
with it on a thread; in its own process the request path only appends to a list.

Per batch it scores the records with the other arm they name (the shadow score, one ONNX
call per version), encodes them and sends them. When the broker does not take them,
records go to a spool on disk (JSON lines in numbered segment files) and, once anything is
spooled, every later record goes there too, so the log keeps its order. Every second it
tries to send the spool, oldest segment first, and deletes a segment only after the broker
acknowledged all of it: a crash mid-replay sends some records twice (consumers dedupe by
`transaction_id`), never loses one. The spool is capped at `spool_max_bytes`; past the cap
records are dropped, counted and logged at ERROR: bounded disk beats a full disk.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.events import PREDICTIONS_TOPIC
from core.features import MODEL_FEATURES
from core.settings import Settings

log = logging.getLogger(__name__)

SEGMENT_BYTES = 4 * 1024 * 1024
SEND_TIMEOUT_S = 5.0
RETRY_EVERY_S = 1.0
# Slots of the shared stats array the parent reads for /metrics.
SENT, SPOOLED, REPLAYED, DROPPED, SPOOL_RECORDS, SPOOL_BYTES, READY = range(7)
STATS_SLOTS = 7


class Spool:
    """Append-only JSON-lines segments; read oldest first; a segment is deleted once sent."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        folder.mkdir(parents=True, exist_ok=True)
        self.torn_bytes = self._repair_torn_tail()
        self.records = sum(len(s.read_bytes().splitlines()) for s in self.segments())
        self.bytes = sum(s.stat().st_size for s in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))

    def _repair_torn_tail(self) -> int:
        """Cut a last line the previous writer did not finish; returns the bytes cut.

        A writer killed (or out of disk) inside `append`'s write leaves part of a line at
        the end of the newest segment, the only one appended to. Left there, it would stop
        every replay at `json.loads` (the writer dies, restarts, dies: nothing replayed
        again) and glue the next appended record to itself. That record was never counted
        as spooled, and its rest is gone: it is the one record the crash lost. A complete
        JSON object short only of its newline is kept (no prefix of an object parses).
        """
        segments = self.segments()
        if not segments:
            return 0
        newest = segments[-1]
        data = newest.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        tail = data[data.rfind(b"\n") + 1 :]
        try:
            json.loads(tail)
        except ValueError:
            with newest.open("r+b") as segment:
                segment.truncate(len(data) - len(tail))
            if len(tail) == len(data):
                newest.unlink()
            log.error(
                "prediction spool: cut %d bytes of a record a crash left unfinished in %s", len(tail), newest
            )
            return len(tail)
        with newest.open("ab") as segment:
            segment.write(b"\n")
        return 0

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


class PredictionWriter:
    def __init__(self, settings: Settings, stats: Any) -> None:
        self.settings = settings
        self.stats = stats
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes)
        if self.spool.torn_bytes:
            self.stats[DROPPED] += 1  # the record a crash left half-written
        self._producer: Any = None
        self._challengers: dict[str, Any] = {}  # version -> ServingModel (None: failed to load)
        self._last_attempt = 0.0
        self.broker_up = True  # until a send says otherwise
        self._gauges()

    def run(self, batches: Any) -> None:
        """Consume batches from the parent's queue until it sends None."""
        while True:
            try:
                batch = batches.get(timeout=RETRY_EVERY_S)
            except queue.Empty:
                batch = []
            if batch is None:
                break
            if batch:
                self.write(batch)
            if self.spool.records and time.monotonic() - self._last_attempt >= RETRY_EVERY_S:
                self._replay()
        if self._producer is not None:
            self._producer.close(timeout=5)

    def write(self, batch: list[tuple[dict[str, Any], str | None]]) -> None:
        self._shadow(batch)
        lines = [json.dumps(record, separators=(",", ":")).encode() for record, _ in batch]
        keys = [record["transaction_id"] for record, _ in batch]
        if self.spool.records or not self._send(list(zip(keys, lines, strict=True))):
            self._to_spool(lines)
        else:
            self.stats[SENT] += len(lines)

    def _shadow(self, batch: list[tuple[dict[str, Any], str | None]]) -> None:
        """Fill the shadow arm's score: one ONNX call per version in the batch.

        A canary row was decided by the challenger, so its shadow is the champion.
        """
        by_version: dict[str, list[dict[str, Any]]] = {}
        for record, version in batch:
            if version is not None:
                by_version.setdefault(version, []).append(record)
        for version, records in by_version.items():
            model = self._challenger(version)
            if model is None:
                continue
            vectors = np.array(
                [[r["features"][name] for name in MODEL_FEATURES] for r in records], np.float32
            )
            for record, score in zip(records, model.scorer.score(vectors).tolist(), strict=True):
                arm = "champion" if record["served_by"] == "canary" else "challenger"
                record[f"{arm}_version"], record[f"{arm}_score"] = version, score

    def _challenger(self, version: str) -> Any:
        if version not in self._challengers:
            from services.scoring.models import ServingModel

            try:
                self._challengers[version] = ServingModel.load(self.settings, version)
            except Exception as error:
                log.error("shadow scoring off: challenger %s does not load: %s", version, error)
                self._challengers[version] = None
        return self._challengers[version]

    def _to_spool(self, lines: list[bytes]) -> None:
        dropped = self.spool.append(lines)
        self.stats[SPOOLED] += len(lines) - dropped
        if dropped:
            self.stats[DROPPED] += dropped
            log.error("prediction spool full (%d bytes): dropped %d records", self.spool.max_bytes, dropped)
        self._gauges()

    def _gauges(self) -> None:
        self.stats[SPOOL_RECORDS] = self.spool.records
        self.stats[SPOOL_BYTES] = self.spool.bytes

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
            self.stats[REPLAYED] += len(lines)
            self._gauges()
            log.info("replayed %d spooled predictions (%d left)", len(lines), self.spool.records)

    def _reachable(self) -> bool:
        # kafka-python's constructor retries a dead bootstrap address with growing backoff
        # for many seconds; a plain connect tells in milliseconds.
        from pipelines.kafka_clients import host_port

        try:
            socket.create_connection(host_port(self.settings.kafka_bootstrap), 0.5).close()
            return True
        except OSError:
            return False

    def _send(self, keyed: list[tuple[str, bytes]]) -> bool:
        """Send and wait for the acknowledgements; False if the broker did not take them all."""
        from kafka.errors import KafkaError

        from pipelines import kafka_clients

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


def run_writer(settings: Settings, batches: Any, stats: Any, challenger: str | None) -> None:
    """Entry point of the writer process: load what it needs, say it is ready, then write."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # it logs every refused reconnect
    writer = PredictionWriter(settings, stats)
    if challenger is not None:
        writer._challenger(challenger)  # now, not on the first batch under load
    stats[READY] = 1
    writer.run(batches)
