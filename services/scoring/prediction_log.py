"""The prediction log, request side: every decision, with the vector scored, handed off.

A request appends its record to a list (no I/O, no lock: the event loop is the only
writer). Every `FLUSH_EVERY_S` the loop passes the list as one batch to the writer process
(`prediction_writer`), which does the shadow scoring, the Kafka sends and the spool. The
parent's share per record is a pickle of the batch on multiprocessing's feeder thread.

Nothing is lost silently: a full hand-over queue (the writer stalled) drops the batch and
counts it in `fraud_prediction_log_records_total{outcome="dropped"}`, beside the writer's
own sent / spooled / replayed / dropped counts, which it keeps in shared memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import queue
from typing import Any

from core.settings import Settings
from monitoring.metrics import PredictionLogCollector, ScoringMetrics
from services.scoring import prediction_writer as writer

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.02
QUEUE_BATCHES = 5_000  # ~100 s of batches at 20 ms: the writer restarting does not drop
MAX_PENDING = 50_000


class PredictionLog:
    def __init__(self, settings: Settings, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.batches: Any = self._context.Queue(maxsize=QUEUE_BATCHES)
        self.stats: Any = self._context.Array("q", writer.STATS_SLOTS, lock=False)  # the writer's
        self.pending: list[tuple[dict[str, Any], str | None]] = []
        self.dropped = 0
        self.process: Any = None
        self._flusher: asyncio.Task[None] | None = None
        metrics.registry.register(PredictionLogCollector(self.counts))

    def counts(self) -> dict[str, float]:
        return {
            "sent": self.stats[writer.SENT],
            "spooled": self.stats[writer.SPOOLED],
            "replayed": self.stats[writer.REPLAYED],
            "dropped": self.stats[writer.DROPPED] + self.dropped,
            "spool_records": self.stats[writer.SPOOL_RECORDS],
            "spool_bytes": self.stats[writer.SPOOL_BYTES],
            "pending": len(self.pending),
        }

    def submit(self, record: dict[str, Any], shadow_version: str | None) -> None:
        """Queue one record; `shadow_version` is the other arm to score it with, if any."""
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append((record, shadow_version))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            self.batches.put_nowait(batch)
        except queue.Full:
            self.dropped += len(batch)
            log.error("prediction writer not keeping up: dropped %d records", len(batch))

    @property
    def ready(self) -> bool:
        """The writer has started and loaded the challenger (its imports take seconds)."""
        return bool(self.stats[writer.READY])

    def _start_writer(self, challenger: str | None = None) -> None:
        self.process = self._context.Process(
            target=writer.run_writer,
            args=(self.settings, self.batches, self.stats, challenger),
            name="prediction-writer",
            daemon=True,
        )
        self.process.start()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            self.flush()
            if not self.process.is_alive():
                log.error("prediction writer exited (%s): restarting it", self.process.exitcode)
                self._start_writer()

    async def start(self, challenger: str | None = None) -> None:
        self._start_writer(challenger)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Hand over what is pending; the writer sends or spools it all, then exits."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush()
        self.batches.put(None)
        await asyncio.to_thread(self.process.join, timeout_s)
        if self.process.is_alive():
            self.process.kill()
