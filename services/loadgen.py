"""The open-loop engine behind `fraudctl loadtest`: a schedule, a connection cap, a histogram.

Open loop: request i is due at start + i / rps whether or not earlier ones returned, and
its latency is measured from that due time, not from when it went out. A client that
waits for a reply before sending the next (closed loop), or that starts the clock when it
finally sends, hides exactly the queueing a stalled server causes (coordinated omission).
When all `max_connections` are busy a due request waits in a backlog, and the wait counts.
A request is a coroutine only while it is out; the schedule itself is one loop.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from services.http1 import HttpPool, error_kind

HIGHEST_US = 3_600_000_000  # one hour: nothing a load test records is longer
SIGNIFICANT_DIGITS = 3


@dataclass
class Tally:
    """What a run did, updated as it goes (the progress display reads it)."""

    total: int  # scheduled requests, warmup included
    sent: int = 0
    completed: int = 0
    queued: int = 0  # due but waiting for a free connection
    errors: int = 0  # in the measured period
    errors_by_kind: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    ok: int = 0  # 2xx replies in the measured period
    measured: int = 0  # requests in the measured period
    last_done: float = 0.0  # perf_counter of the last measured completion

    @property
    def in_flight(self) -> int:
        return self.sent - self.completed


async def open_loop(
    url: str,
    body: Callable[[int], bytes],
    rps: float,
    duration_s: float,
    warmup_s: float,
    max_connections: int,
    timeout_s: float,
    on_tick: Callable[[Tally], None] | None = None,
    on_reply: Callable[[bytes], None] | None = None,
) -> tuple[HdrHistogram, Tally, float, int]:
    """Send `rps` requests a second on schedule; record the measured ones' latency.

    `on_reply` gets the body of every measured 2xx reply, after its latency is taken
    (what the traffic exercised: decisions, who decided, whether history was found).

    Returns:
        The latency histogram (µs, from each request's due time, HTTP replies of any
        status), the tally, the perf_counter time at which measurement began, and the
        number of connections opened.
    """
    pool, loop = HttpPool(url), asyncio.get_running_loop()
    histogram = HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)
    warm, interval = round(rps * warmup_s), 1.0 / rps
    tally = Tally(total=warm + max(1, round(rps * duration_s)))
    backlog: collections.deque[tuple[int, float]] = collections.deque()
    idle, active = asyncio.Event(), 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        kind: str | None = None
        tally.sent += 1
        try:
            async with asyncio.timeout(timeout_s):
                status, reply = await pool.post(body(i))
            kind = None if 200 <= status < 300 else f"http_{status}"
        except Exception as error:
            status, reply, kind = 0, b"", error_kind(error)
        done = time.perf_counter()
        tally.completed += 1
        if i < warm:
            return
        tally.measured += 1
        tally.last_done = done
        if status:
            histogram.record_value(min(max(1, int((done - due) * 1e6)), HIGHEST_US))
        if kind is None:
            tally.ok += 1
            if on_reply is not None:
                on_reply(reply)
        else:
            tally.errors += 1
            tally.errors_by_kind[kind] += 1

    async def worker(i: int, due: float) -> None:
        nonlocal active
        while True:
            await one(i, due)
            if not backlog:
                break
            i, due = backlog.popleft()
            tally.queued -= 1
        active -= 1
        if active == 0:
            idle.set()

    async def ticker() -> None:
        while on_tick is not None:
            on_tick(tally)
            await asyncio.sleep(0.25)

    ticking = loop.create_task(ticker())
    start = time.perf_counter() + 0.01  # the first due time, after this setup
    try:
        for i in range(tally.total):
            due = start + i * interval
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            elif i % 64 == 0:  # behind schedule: still let replies in while catching up
                await asyncio.sleep(0)
            if active < max_connections:
                active += 1
                idle.clear()
                task = loop.create_task(worker(i, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                backlog.append((i, due))
                tally.queued += 1
        if active:  # the schedule is over: what is still out gets one timeout to finish
            try:
                async with asyncio.timeout(timeout_s):
                    await idle.wait()
            except TimeoutError:
                _abandon(tally, backlog, tasks, warm)
    finally:
        ticking.cancel()
        for task in list(tasks):
            task.cancel()
        pool.close()
    if on_tick is not None:
        on_tick(tally)
    return histogram, tally, start + warm * interval, pool.opened


def _abandon(
    tally: Tally, backlog: collections.deque[tuple[int, float]], tasks: set[asyncio.Task[None]], warm: int
) -> None:
    """Count the requests still queued or out after the drain timeout as timeouts."""
    stuck = sum(1 for i, _ in backlog if i >= warm) + sum(1 for _ in tasks)
    tally.measured += stuck
    tally.errors += stuck
    tally.errors_by_kind["timeout"] += stuck
    backlog.clear()


@dataclass(frozen=True)
class LoadResult:
    """One constant-rate run. Latencies in ms from each request's due time; None if no reply."""

    url: str
    target_rps: float
    achieved_rps: float  # 2xx replies / max(duration, measurement start → last completion)
    duration_s: float
    warmup_s: float
    requests: int  # measured requests (the warmup's are sent, not counted)
    ok: int
    errors: int
    errors_by_kind: dict[str, int]  # http_422, http_500, timeout, connect, disconnect
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    slo_p99_ms: float
    slo_met: bool  # p99 within the SLO and zero errors (DESIGN.md section 6)
    max_connections: int
    connections_opened: int
    # What the traffic exercised, from the replies (see `services.loadtest.TrafficMix`):
    card_history_share: float | None = None  # replies whose card's stored features were fresh
    history_share: dict[str, float] = field(default_factory=dict)  # card, merchant, device
    decision_mix: dict[str, float] = field(default_factory=dict)  # approve, review, decline
    served_by_mix: dict[str, float] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)  # where the bodies came from

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self) -> str:
        """Why the SLO was missed, in one line ('' if it was met)."""
        if self.slo_met:
            return ""
        if self.errors:
            kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(self.errors_by_kind.items()))
            return f"{self.errors:,} of {self.requests:,} requests failed ({kinds})"
        return f"p99 {self.p99_ms:,.1f} ms > SLO {self.slo_p99_ms:g} ms at {self.target_rps:,.0f} req/s"


@dataclass(frozen=True)
class RampResult:
    """The steps of a ramp, up to and including the first that missed the SLO."""

    steps: list[LoadResult] = field(default_factory=list)
    max_rps_meeting_slo: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The best passing step's keys (the first step's if none passed), the steps, the answer."""
        passing = [s for s in self.steps if s.slo_met]
        best = passing[-1] if passing else self.steps[0]
        return {
            **best.as_dict(),
            "ramp": [s.as_dict() for s in self.steps],
            "max_rps_meeting_slo": self.max_rps_meeting_slo,
        }


def summarize(
    url: str,
    schedule: tuple[float, float, float],
    slo_p99_ms: float,
    max_connections: int,
    histogram: HdrHistogram,
    tally: Tally,
    measure_start: float,
    opened: int,
) -> LoadResult:
    """The result of an `open_loop` run at `schedule` = (rps, duration_s, warmup_s)."""
    rps, duration_s, warmup_s = schedule
    elapsed = max(duration_s, tally.last_done - measure_start)  # a backlog drained late counts
    replied = histogram.get_total_count() > 0

    def ms(value: float) -> float | None:
        return round(value / 1000, 3) if replied else None

    p99 = ms(histogram.get_value_at_percentile(99))
    return LoadResult(
        url=url,
        target_rps=rps,
        achieved_rps=round(tally.ok / elapsed, 1),
        duration_s=duration_s,
        warmup_s=warmup_s,
        requests=tally.measured,
        ok=tally.ok,
        errors=tally.errors,
        errors_by_kind=dict(sorted(tally.errors_by_kind.items())),
        p50_ms=ms(histogram.get_value_at_percentile(50)),
        p90_ms=ms(histogram.get_value_at_percentile(90)),
        p99_ms=p99,
        p999_ms=ms(histogram.get_value_at_percentile(99.9)),
        max_ms=ms(histogram.get_max_value()),
        mean_ms=ms(histogram.get_mean_value()),
        slo_p99_ms=slo_p99_ms,
        slo_met=tally.measured > 0 and tally.errors == 0 and p99 is not None and p99 <= slo_p99_ms,
        max_connections=max_connections,
        connections_opened=opened,
    )
