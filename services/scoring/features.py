"""Online features for a score request, within a time budget, behind a circuit breaker.

The Feast read runs on one dedicated thread, so the event loop can stop waiting when the
budget is spent: a slow store costs a request at most `feature_timeout_ms`, never the
whole latency budget. One thread, because Feast's SQLite store shares one connection
between threads, and a read takes ~0.3 ms: one thread serves thousands per second.

After `breaker_failures` failed lookups in a row the breaker opens: requests skip the
store at once (and are scored with request-time features and defaults) until
`breaker_reset_seconds` have passed; then one probe decides whether it closes again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from core.features import Snapshot
from monitoring.metrics import ScoringMetrics

log = logging.getLogger(__name__)

Snapshots = dict[str, Snapshot | None]
Reader = Callable[[str, str | None, str | None], Snapshots]

OK, TIMEOUT, ERROR, BREAKER_OPEN, UNAVAILABLE = "ok", "timeout", "error", "breaker_open", "unavailable"


class CircuitBreaker:
    """closed → (n failures in a row) → open → (reset time) → half_open → one probe decides."""

    def __init__(self, failures_to_open: int, reset_seconds: float, on_change: Callable[[str], None]) -> None:
        self.failures_to_open = failures_to_open
        self.reset_seconds = reset_seconds
        self.on_change = on_change
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._lock = threading.Lock()

    def _set(self, state: str) -> None:
        if state != self.state:
            log.warning("feature-store breaker %s -> %s", self.state, state)
            self.state = state
            self.on_change(state)

    def allow(self) -> bool:
        """May a lookup go to the store now? In half-open state only the one probe may."""
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_seconds:
                self._set("half_open")
                return True
            return False

    def record(self, ok: bool) -> None:
        with self._lock:
            if self.state == "open":
                return  # a lookup let through before it opened: its outcome is old news
            if ok:
                self.failures = 0
                self._set("closed")
                return
            self.failures += 1
            if self.state == "half_open" or self.failures >= self.failures_to_open:
                self.opened_at = time.monotonic()
                self._set("open")


@dataclass(frozen=True)
class Lookup:
    snapshots: Snapshots | None  # None: the store could not answer; score with defaults
    outcome: str
    seconds: float


class FeatureClient:
    """Card, merchant and device snapshots for one request, or a reason why not."""

    def __init__(
        self, reader: Reader | None, timeout_s: float, breaker: CircuitBreaker, metrics: ScoringMetrics
    ) -> None:
        self.reader = reader
        self.timeout_s = timeout_s
        self.breaker = breaker
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-read")

    async def lookup(self, card_id: str, merchant_id: str | None, device_id: str | None) -> Lookup:
        start = time.perf_counter()
        if self.reader is None:
            outcome, snapshots = UNAVAILABLE, None
        elif not self.breaker.allow():
            outcome, snapshots = BREAKER_OPEN, None
        else:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self.reader, card_id, merchant_id, device_id)
            try:
                snapshots = await asyncio.wait_for(future, self.timeout_s)
                outcome = OK
            except TimeoutError:
                # The read stays queued or running on the reader thread; wait_for cancelled
                # it if it had not started, so a stalled store does not pile up work.
                outcome, snapshots = TIMEOUT, None
            except Exception as error:  # any store failure: degrade, log once per kind
                log.warning("online feature lookup failed: %s: %s", type(error).__name__, error)
                outcome, snapshots = ERROR, None
            self.breaker.record(outcome == OK)
        self.metrics.feature_lookups.labels(outcome).inc()
        return Lookup(snapshots, outcome, time.perf_counter() - start)

    def reachable(self) -> bool:
        """For /readyz: a reader exists and the breaker lets lookups through."""
        return self.reader is not None and self.breaker.state != "open"

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
