"""`fraudctl loadtest`: open-loop load against `POST /v1/score`, and the rate that still meets the SLO.

The SLO (DESIGN.md section 6) is a p99 under a constant arrival rate, so the load must
arrive like card traffic does: on schedule, whether or not the service kept up. Each
request's latency counts from when it was due, so a stall shows as the queue it builds
instead of as one slow request (no coordinated omission; see `services.loadgen`).
Latencies go into an HDR histogram (µs, 3 significant digits): exact enough at p99.9,
and constant in memory however long the run.

    fraudctl loadtest --rps 500 --duration 60 --slo-p99-ms 10
    fraudctl loadtest --ramp --rps 500 --duration 10 --slo-p99-ms 50 --json

Bodies are real transactions in the event schema, from the simulator (seeded) or a
dataset, each with a fresh `transaction_id` and `event_time` = now, so the service sees
distinct, current authorizations of existing cards, merchants and devices.

Client capacity on the 2-core machine, against a fixed-reply server in another process
(`python -m tests.integration.stub_scoring --fixed`): 2,000 req/s cost ~21 % of one
core (~100 µs of CPU a request, uvloop), and it sustained 6,000 req/s at p99 20 ms;
at 8,000 the two processes together topped out at ~6,600 req/s. Why a hand-written
HTTP client rather than aiohttp's: `services.http1`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.settings import get_settings
from services.loadgen import LoadResult, RampResult, Tally, open_loop, summarize

DEFAULT_URL = "http://127.0.0.1:8000"
# Set per request, so left out of a pool entry. `scenario` is ground truth: never on the wire.
PER_REQUEST_FIELDS = ("transaction_id", "event_time")


@dataclass(frozen=True)
class TransactionPool:
    """Transactions to cycle through, pre-encoded except for the per-request fields.

    `tails` hold each transaction's JSON after the per-request fields (``"card_id": ...}``)
    so that a body costs a few concatenations, not a ``json.dumps``. Ids come from one
    counter per pool, so runs that share a pool (a ramp's steps) never repeat an id.
    """

    tails: list[bytes]
    id_prefix: str  # unique per pool, so reruns against one service never reuse an id
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def body(self, i: int) -> bytes:
        """A request body: pool entry i mod size, a new transaction id, event time now."""
        now = datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"
        head = f'{{"transaction_id": "{self.id_prefix}{next(self._ids)}", "event_time": "{now}", '
        return head.encode() + self.tails[i % len(self.tails)]


def transaction_pool(size: int = 2_000, seed: int = 7, data_dir: Path | None = None) -> TransactionPool:
    """A pool of realistic transactions: simulated (seeded), or sampled from a dataset.

    Args:
        size: How many distinct transactions to cycle through.
        seed: Seeds the simulator, or the sample drawn from `data_dir`.
        data_dir: A dataset (`fraudctl simulate`/`import` output) to sample instead.

    Raises:
        ValueError: `size` < 1 or the dataset holds no transactions (DatasetError if none).
    """
    from core.events import Transaction  # lazily: locust imports this module under gevent

    if size < 1:
        raise ValueError(f"--pool-size must be at least 1, got {size}")
    if data_dir is not None:
        from core.dataset import read_transactions

        frame = read_transactions(Path(data_dir))
        if frame.empty:
            raise ValueError(f"{data_dir} holds no transactions")
        frame = frame.sample(n=min(size, len(frame)), random_state=seed).sort_values("event_time")
    else:
        from pipelines.simulate import SimulationParams, generate

        cards = max(10, size // 4)  # ~1.7 transactions a card a day, over 3 days
        params = SimulationParams(days=3, cards=cards, merchants=max(20, cards // 10), seed=seed)
        frame = generate(params).transactions.head(size)
    fields = [name for name in Transaction.model_fields if name not in PER_REQUEST_FIELDS]
    tails = [
        json.dumps({k: None if _missing(v) else v for k, v in row.items()})[1:].encode()
        for row in frame[fields].to_dict("records")
    ]
    pool = TransactionPool(tails, f"lt-{random.getrandbits(32):08x}-")
    Transaction.model_validate_json(pool.body(0))  # fail here, not as 10,000 HTTP 422s
    return pool


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _runner_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop if installed (uvicorn[standard] brings it): half the client CPU per request."""
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def run_load(
    url: str = DEFAULT_URL,
    rps: float = 500.0,
    duration_s: float = 30.0,
    warmup_s: float = 5.0,
    slo_p99_ms: float = 10.0,
    transactions: TransactionPool | None = None,
    max_connections: int = 256,
    timeout_s: float = 5.0,
    progress: bool = False,
    label: str = "loadtest",
) -> LoadResult:
    """Send `rps` transactions a second for `warmup_s` + `duration_s`; measure after the warmup.

    Args:
        url: The service (``/v1/score`` is appended when the URL has no path).
        transactions: The bodies to send; default: a simulated pool (`transaction_pool()`).
        max_connections: Cap on requests in flight (one keep-alive connection each);
            beyond it a due request waits, and the wait counts in its latency.
        timeout_s: A request without a reply after this long is a `timeout` error.
        progress: Show sent / completed / in flight / errors on stderr while it runs.

    Returns:
        The result; failed requests are counted by kind, never raised.

    Raises:
        ValueError: A bad argument (rate, duration, URL).
    """
    if not (0 < rps < math.inf and duration_s > 0 and warmup_s >= 0 and max_connections >= 1):
        raise ValueError(
            f"need --rps > 0, --duration > 0, --warmup >= 0, --max-connections >= 1; got {rps}, "
            f"{duration_s}, {warmup_s}, {max_connections}"
        )
    pool = transactions if transactions is not None else transaction_pool()
    columns = (TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("{task.fields[stats]}"))
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task(label, stats="")

        def tick(t: Tally) -> None:
            stats = (
                f"sent {t.sent:,}/{t.total:,}  completed {t.completed:,}  in flight {t.in_flight:,}"
                f"  queued {t.queued:,}  errors {t.errors:,}"
            )
            bar.update(task, stats=stats)

        coroutine = open_loop(
            url, pool.body, rps, duration_s, warmup_s, max_connections, timeout_s, tick if progress else None
        )
        with asyncio.Runner(loop_factory=_runner_loop()) as runner:
            histogram, tally, measure_start, opened = runner.run(coroutine)
    return summarize(
        url, (rps, duration_s, warmup_s), slo_p99_ms, max_connections, histogram, tally, measure_start, opened
    )


def ramp(
    url: str = DEFAULT_URL,
    start_rps: float = 500.0,
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    slo_p99_ms: float = 50.0,
    factor: float = 1.25,
    step_rps: float | None = None,
    max_rps: float = 50_000.0,
    transactions: TransactionPool | None = None,
    on_step: Callable[[LoadResult], None] | None = None,
    attempts: int = 1,
    **run_options: Any,
) -> RampResult:
    """Raise the rate step by step until a step misses the SLO; the last passing rate is the answer.

    Each step is a `run_load` of `warmup_s` + `duration_s` at a rate `factor` times the
    previous one (or `step_rps` more, if given), starting at `start_rps`, up to `max_rps`.

    Args:
        on_step: Called with each step's result as it finishes (progress, logging).
        attempts: Runs a rate may take to meet the SLO before the ramp stops (a shared
            machine now and then stalls a short step); every run is reported.
        run_options: Passed to `run_load` (max_connections, timeout_s, progress).

    Raises:
        ValueError: A bad argument.
    """
    if factor <= 1 and not step_rps:
        raise ValueError(f"--ramp-factor must be > 1 (or give --ramp-step), got {factor}")
    if step_rps is not None and step_rps <= 0:
        raise ValueError(f"--ramp-step must be positive, got {step_rps}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if not 0 < start_rps <= max_rps:
        raise ValueError(f"the ramp must start at a rate in (0, --ramp-max = {max_rps:g}], got {start_rps:g}")
    pool = transactions if transactions is not None else transaction_pool()
    steps: list[LoadResult] = []
    best, rate = None, start_rps
    while rate <= max_rps:
        for _ in range(attempts):
            step = run_load(
                url,
                rate,
                duration_s,
                warmup_s,
                slo_p99_ms,
                pool,
                label=f"ramp {rate:,.0f} req/s",
                **run_options,
            )
            steps.append(step)
            if on_step is not None:
                on_step(step)
            if step.slo_met:
                break
        if not step.slo_met:
            break
        best = rate
        rate = rate + step_rps if step_rps else rate * factor
    return RampResult(steps, best)


def result_table(result: LoadResult) -> Table:
    table = Table(title=f"loadtest {result.url}", show_header=False)
    rows = {
        "requests": f"{result.requests:,} in {result.duration_s:g} s (+ {result.warmup_s:g} s warmup)",
        "achieved rps": f"{result.achieved_rps:,.1f} (target {result.target_rps:,.0f})",
        **{name: _ms(getattr(result, f"{key}_ms")) for name, key in _PERCENTILES},
        "errors": f"{result.errors:,}" + "".join(f"  {k} {n:,}" for k, n in result.errors_by_kind.items()),
        "SLO p99": f"{result.slo_p99_ms:g} ms: {'met' if result.slo_met else 'MISSED'}",
    }
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def _ramp_table(result: RampResult) -> Table:
    table = Table(title="ramp", caption=f"max rate meeting the SLO: {_rate(result.max_rps_meeting_slo)}")
    for heading in ("target rps", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "SLO"):
        table.add_column(heading, justify="right")
    for s in result.steps:
        latencies = ["-" if v is None else f"{v:,.1f}" for v in (s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms)]
        verdict = "met" if s.slo_met else "missed"
        table.add_row(f"{s.target_rps:,.0f}", f"{s.achieved_rps:,.0f}", *latencies, f"{s.errors:,}", verdict)
    return table


_PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"), ("max", "max"))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} ms"


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:,.0f} req/s"


def cli(
    url: Annotated[
        str | None,
        typer.Option(
            help="The service; /v1/score is added if no path.", show_default="http://FRAUD_SERVE_HOST:PORT"
        ),
    ] = None,
    rps: Annotated[float, typer.Option(help="Requests per second (with --ramp: the first step).")] = 500.0,
    duration: Annotated[float, typer.Option(help="Measured seconds (with --ramp: per step).")] = 30.0,
    warmup: Annotated[float, typer.Option(help="Seconds sent first and not measured.")] = 5.0,
    slo_p99_ms: Annotated[float, typer.Option(help="The p99 latency the run must stay within.")] = 10.0,
    max_connections: Annotated[
        int, typer.Option(help="Requests in flight at most; beyond, a due request waits (and that counts).")
    ] = 256,
    timeout: Annotated[float, typer.Option(help="Seconds before a request counts as a timeout.")] = 5.0,
    data: Annotated[
        Path | None, typer.Option(help="Sample the transactions from this dataset instead of simulating.")
    ] = None,
    pool_size: Annotated[int, typer.Option(help="Distinct transactions to cycle through.")] = 2_000,
    seed: Annotated[int, typer.Option(help="Seed of the simulated or sampled pool.")] = 7,
    ramp_up: Annotated[
        bool, typer.Option("--ramp", help="Raise the rate until a step misses the SLO; report the last pass.")
    ] = False,
    ramp_factor: Annotated[float, typer.Option(help="Each step's rate: the previous one times this.")] = 1.25,
    ramp_step: Annotated[float | None, typer.Option(help="Or: each step this many req/s more.")] = None,
    ramp_max: Annotated[float, typer.Option(help="Stop the ramp above this rate.")] = 50_000.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object, not a table.")] = False,
) -> None:
    """Open-loop load on POST /v1/score at a constant rate: latency percentiles, errors, SLO verdict.

    Latency counts from each request's scheduled time, so queueing shows.
    Exits 1 when the SLO (p99 within --slo-p99-ms, zero errors) is missed; with --ramp, when none met it.

    Example: fraudctl loadtest --rps 500 --duration 60 --slo-p99-ms 10
    Example: fraudctl loadtest --ramp --rps 500 --duration 10 --slo-p99-ms 50 --json
    """
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    settings = get_settings()  # where `fraudctl serve` listens by default
    url = url or f"http://{settings.serve_host}:{settings.serve_port}"
    try:
        pool = transaction_pool(pool_size, seed, data)
        if ramp_up:
            found = ramp(
                url, rps, duration, warmup, slo_p99_ms, ramp_factor, ramp_step, ramp_max, pool,
                max_connections=max_connections, timeout_s=timeout, progress=not as_json,
            )  # fmt: skip
            report, failure = found.as_dict(), "" if found.max_rps_meeting_slo else found.steps[0].reason()
            table = _ramp_table(found)
        else:
            result = run_load(
                url, rps, duration, warmup, slo_p99_ms, pool, max_connections, timeout, progress=not as_json
            )
            report, failure, table = result.as_dict(), result.reason(), result_table(result)
    except ValueError as error:  # DatasetError is a ValueError
        err.print(f"error: {escape(str(error))}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report))
    else:
        Console(highlight=False).print(table)
    if failure:
        err.print(f"SLO missed: {escape(failure)}")
        raise typer.Exit(1)
