"""`fraudctl loadtest`: open-loop load against `POST /v1/score`, and the rate that still meets the SLO.

The SLO (DESIGN.md section 6) is a p99 under a constant arrival rate, so the load must
arrive like card traffic does: on schedule, whether or not the service kept up. Each
request's latency counts from when it was due, so a stall shows as the queue it builds
instead of as one slow request (no coordinated omission; see `services.loadgen`).
Latencies go into an HDR histogram (µs, 3 significant digits): exact enough at p99.9,
and constant in memory however long the run.

    fraudctl loadtest --rps 500 --duration 60 --slo-p99-ms 10
    fraudctl loadtest --ramp --rps 500 --duration 10 --slo-p99-ms 50 --json

Bodies are real transactions in the event schema, each with a fresh `transaction_id` and
its own `event_time`, so that the service scores them against the history the online
store holds, as it would have live. By default the pool is what `fraudctl backfill
--hold-back-days N` held back: the dataset's transactions after the online store's cut,
in time order, fraud scenarios and new cards in the data's own proportions. Replies are
read, so the result says what the traffic exercised: the share of requests whose card
history was found and fresh, the decision mix and who decided. Nothing streams into the
store during a load test, so a card's later transactions of the held-back day are scored
without its earlier ones of that day: bursts (card testing) look milder than they were.

Client capacity on the 2-core machine, against a fixed-reply server in another process
(`python -m tests.integration.stub_scoring --fixed`): 2,000 req/s cost ~21 % of one
core (~100 µs of CPU a request, uvloop), and it sustained 6,000 req/s at p99 20 ms;
at 8,000 the two processes together topped out at ~6,600 req/s. Why a hand-written
HTTP client rather than aiohttp's: `services.http1`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.settings import Settings, get_settings
from services.loadgen import LoadResult, RampResult, Tally, open_loop, summarize

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_URL = "http://127.0.0.1:8000"
ENTITIES = ("card", "merchant", "device")
# Cards seen for the first time, as a share of a day's transactions. The simulated world
# issues (almost) no cards after its first days, so a load test adds some: without them
# the path of a card with no history would not be exercised at all.
NEW_CARD_SHARE = 0.02
DECISIONS = ("approve", "review", "decline")


@dataclass(frozen=True)
class TransactionPool:
    """Transactions to cycle through, pre-encoded but for the transaction id.

    `tails` hold each transaction's JSON after the id (``"event_time": ...}``), so that a
    body costs a few concatenations, not a ``json.dumps``. Ids come from one counter per
    pool, so runs that share a pool (a ramp's steps) never repeat an id.
    """

    tails: list[bytes]
    id_prefix: str  # unique per pool, so reruns against one service never reuse an id
    source: str = "simulated"  # where the transactions come from, in words
    after: str | None = None  # the online store's cut the pool starts after (ISO), if any
    fraud_share: float | None = None  # labelled fraud among the pool's transactions
    source_ids: tuple[str, ...] = ()  # the dataset's ids of the pool's transactions
    new_cards: int = 0  # transactions sent as a card never seen
    _ids: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def body(self, i: int) -> bytes:
        """A request body: pool entry i mod size, with a new transaction id."""
        head = f'{{"transaction_id": "{self.id_prefix}{next(self._ids)}", '
        return head.encode() + self.tails[i % len(self.tails)]

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "transactions": len(self.tails), "after": self.after,
                "fraud_share": self.fraud_share, "new_cards": self.new_cards}  # fmt: skip


def transaction_pool(
    size: int = 20_000,
    seed: int = 7,
    data_dir: Path | None = None,
    after: datetime | None = None,
    new_card_share: float = NEW_CARD_SHARE,
) -> TransactionPool:
    """A pool of realistic transactions: sampled from a dataset, or simulated (seeded).

    Args:
        size: At most this many distinct transactions (a seeded sample if there are more).
        seed: Seeds the simulator, or the sample drawn from `data_dir`.
        data_dir: A dataset (`fraudctl simulate`/`import` output) to take them from.
        after: Only the dataset's transactions after this time: the online store's cut, so
            that each card's stored history is from before its transactions.
        new_card_share: Send this share of a dataset's transactions as cards never seen
            (a new card id): the simulated world issues no cards after its first days.

    Raises:
        ValueError: `size` < 1 or no transactions to take (DatasetError if no dataset).
    """
    import numpy as np  # lazily, as everything heavy: locust imports this module under gevent
    import pandas as pd

    from core.events import Transaction  # (the scenario column, ground truth, stays home)

    if size < 1:
        raise ValueError(f"--pool-size must be at least 1, got {size}")
    if not 0 <= new_card_share <= 1:
        raise ValueError(f"--new-card-share must be in [0, 1], got {new_card_share}")
    if data_dir is not None:
        from core.dataset import read_transactions

        frame = read_transactions(Path(data_dir))
        if after is not None:
            frame = frame[frame["event_time"] > pd.Timestamp(after)]
        if frame.empty:
            where = "" if after is None else f" after {after:%Y-%m-%d %H:%M} UTC"
            raise ValueError(f"{data_dir} holds no transactions{where}")
        if len(frame) > size:
            frame = frame.sample(n=size, random_state=seed)
        frame = frame.sort_values("event_time", kind="stable").reset_index(drop=True)
        new = np.random.default_rng(seed).random(len(frame)) < new_card_share
        frame.loc[new, "card_id"] = [f"new-card-{i}" for i in range(int(new.sum()))]
        frame.loc[new, "customer_id"] = frame.loc[new, "card_id"]
        source = str(data_dir)
    else:
        from pipelines.simulate import SimulationParams, generate

        cards = max(10, size // 4)  # ~1.7 transactions a card a day, over 3 days
        params = SimulationParams(days=3, cards=cards, merchants=max(20, cards // 10), seed=seed)
        frame = generate(params).transactions.head(size)
        source = f"simulated (seed {seed}): cards no store has seen"
    fields = [name for name in Transaction.model_fields if name != "transaction_id"]
    wire = frame[fields].assign(event_time=frame["event_time"].map(_iso))
    tails = [
        json.dumps({k: None if _missing(v) else v for k, v in row.items()})[1:].encode()
        for row in wire.to_dict("records")
    ]
    fraud = frame["scenario"].ne("legit").mean() if "scenario" in frame else None
    pool = TransactionPool(
        tails,
        f"lt-{random.getrandbits(32):08x}-",
        source=source,
        after=None if after is None else pd.Timestamp(after).isoformat(),
        fraud_share=None if fraud is None else round(float(fraud), 4),
        source_ids=tuple(frame["transaction_id"]) if data_dir is not None else (),
        new_cards=int(frame["card_id"].str.startswith("new-card-").sum()) if data_dir is not None else 0,
    )
    Transaction.model_validate_json(pool.body(0))  # fail here, not as 10,000 HTTP 422s
    return pool


def _iso(time: pd.Timestamp) -> str:
    return time.isoformat().replace("+00:00", "Z")


def default_pool_source(
    settings: Settings, data_dir: Path | None, after: datetime | None
) -> tuple[Path | None, datetime | None, str | None]:
    """Where the pool comes from when not all is given: the dataset the online store holds.

    Returns:
        The dataset, the time to start after, and a warning for the reader (or None).
    """
    import pandas as pd

    from pipelines.backfill import backfill_record  # the record only: Feast is not imported

    record = backfill_record(settings)
    held = Path(record["data_dir"]) if record else None
    if data_dir is None:
        if held is None or not held.exists():
            if after is not None:
                raise ValueError("--after needs --data: no store was backfilled from a dataset")
            return None, None, "no backfilled dataset: simulated cards the service has never seen"
        data_dir = held
    if after is not None:
        return data_dir, after, None
    cut = record.get("online_as_of") if record and held == data_dir.resolve() else None
    if cut:
        return data_dir, pd.Timestamp(cut).to_pydatetime(), None
    from core.dataset import read_transactions

    last_day = read_transactions(data_dir)["event_time"].max().floor("D")
    warning = (
        f"the online store is not as of a time inside {data_dir} (not backfilled from it with "
        "--hold-back-days), so its snapshots may postdate these transactions and cards look new; "
        "for real histories: fraudctl backfill --data DIR --hold-back-days 1, then restart fraudctl serve"
    )
    return data_dir, last_day.to_pydatetime(), warning


def training_decision_mix(settings: Settings, pool: TransactionPool) -> dict[str, Any] | None:
    """The champion's decisions on the pool's transactions as training scored them.

    The reference a load test's decision mix is judged against: the same transactions,
    scored on their point-in-time training vectors (the champion's test-window
    predictions), banded by its thresholds. Hard rules are not in it. None when the pool
    is not from the champion's test window.
    """
    from models import registry
    from models.costs import Thresholds, decide

    if not pool.source_ids:
        return None
    version, predictions, thresholds = registry.version_test_predictions(settings)
    scored = predictions[predictions["transaction_id"].isin(set(pool.source_ids))]
    if len(scored) < 0.9 * len(pool.source_ids):
        return None
    decisions = decide(scored["score"].to_numpy(), Thresholds.from_dict(thresholds))
    counts = collections.Counter(decisions.tolist())
    return {
        "model_version": version,
        "transactions": len(scored),
        "decision_mix": {d: round(counts[d] / len(scored), 4) for d in DECISIONS},
    }


@dataclass
class TrafficMix:
    """What the measured replies say the traffic exercised (called with each 2xx body)."""

    replies: int = 0
    stored: collections.Counter[str] = field(default_factory=collections.Counter)
    decisions: collections.Counter[str] = field(default_factory=collections.Counter)
    served_by: collections.Counter[str] = field(default_factory=collections.Counter)

    def __call__(self, body: bytes) -> None:
        try:
            reply = json.loads(body)
        except ValueError:
            return
        self.replies += 1
        self.stored.update(reply.get("stored_features") or ())
        self.decisions[reply.get("decision", "?")] += 1
        self.served_by[reply.get("served_by", "?")] += 1

    def as_dict(self) -> dict[str, Any]:
        def shares(counts: collections.Counter[str], keys: tuple[str, ...] = ()) -> dict[str, float]:
            return {k: round(counts[k] / self.replies, 4) for k in (*keys, *sorted(set(counts) - set(keys)))}

        if not self.replies:
            return {"card_history_share": None, "history_share": {}, "decision_mix": {}, "served_by_mix": {}}
        return {
            "card_history_share": round(self.stored["card"] / self.replies, 4),
            "history_share": shares(self.stored, ENTITIES),
            "decision_mix": shares(self.decisions, DECISIONS),
            "served_by_mix": shares(self.served_by),
        }


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

        mix = TrafficMix()
        coroutine = open_loop(
            url, pool.body, rps, duration_s, warmup_s, max_connections, timeout_s,
            tick if progress else None, mix,
        )  # fmt: skip
        with asyncio.Runner(loop_factory=_runner_loop()) as runner:
            histogram, tally, measure_start, opened = runner.run(coroutine)
    result = summarize(
        url, (rps, duration_s, warmup_s), slo_p99_ms, max_connections, histogram, tally, measure_start, opened
    )
    return dataclasses.replace(result, **mix.as_dict(), pool=pool.describe())


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


def result_table(result: LoadResult, in_training: dict[str, Any] | None = None) -> Table:
    """The run in rows; `in_training`: the `training_decision_mix` to compare decisions with."""
    table = Table(title=f"loadtest {result.url}", show_header=False)
    rows = {
        "requests": f"{result.requests:,} in {result.duration_s:g} s (+ {result.warmup_s:g} s warmup)",
        "achieved rps": f"{result.achieved_rps:,.1f} (target {result.target_rps:,.0f})",
        **{name: _ms(getattr(result, f"{key}_ms")) for name, key in _PERCENTILES},
        "errors": f"{result.errors:,}" + "".join(f"  {k} {n:,}" for k, n in result.errors_by_kind.items()),
        "SLO p99": f"{result.slo_p99_ms:g} ms: {'met' if result.slo_met else 'MISSED'}",
        **traffic_rows(result, in_training),
    }
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def traffic_rows(result: LoadResult, in_training: dict[str, Any] | None = None) -> dict[str, str]:
    """What the traffic was and what it exercised, in words (the table's last rows)."""
    pool = result.pool
    after = f" after {pool['after'][:16].replace('T', ' ')} UTC" if pool.get("after") else ""
    fraud = "" if pool.get("fraud_share") is None else f", fraud {pool['fraud_share']:.1%}"
    count = pool.get("transactions", 0)
    new = f", {pool['new_cards']:,} sent as new cards" if pool.get("new_cards") else ""
    rows = {"traffic": f"{count:,} transactions{after} from {pool.get('source')}{fraud}{new}"}
    if result.card_history_share is not None:
        rows["stored history"] = "  ".join(f"{k} {v:.1%}" for k, v in result.history_share.items())
        rows["decisions"] = _mix(result.decision_mix)
        if in_training:
            rows["… in training"] = (
                f"{_mix(in_training['decision_mix'])}  (version {in_training['model_version']} "
                "on these transactions' training vectors, before hard rules)"
            )
        rows["served by"] = _mix(result.served_by_mix)
    return rows


def _mix(shares: dict[str, float]) -> str:
    return "  ".join(f"{name} {share:.1%}" for name, share in shares.items())


def _ramp_table(result: RampResult) -> Table:
    table = Table(title="ramp", caption=f"max rate meeting the SLO: {_rate(result.max_rps_meeting_slo)}")
    headings = (
        "target rps",
        "achieved",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "card hist",
        "SLO",
    )
    for heading in headings:
        table.add_column(heading, justify="right")
    for s in result.steps:
        latencies = ["-" if v is None else f"{v:,.1f}" for v in (s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms)]
        verdict = "met" if s.slo_met else "missed"
        history = "-" if s.card_history_share is None else f"{s.card_history_share:.0%}"
        table.add_row(
            f"{s.target_rps:,.0f}", f"{s.achieved_rps:,.0f}", *latencies, f"{s.errors:,}", history, verdict
        )
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
        Path | None,
        typer.Option(
            help="Take the transactions from this dataset.",
            show_default="the dataset the online store was backfilled from",
        ),
    ] = None,
    after: Annotated[
        datetime | None,
        typer.Option(
            help="Only the dataset's transactions after this UTC time.",
            show_default="the online store's cut (backfill --hold-back-days)",
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"],
        ),
    ] = None,
    pool_size: Annotated[int, typer.Option(help="Distinct transactions to cycle through, at most.")] = 20_000,
    new_card_share: Annotated[
        float, typer.Option(help="Share of the dataset's transactions sent as cards never seen.")
    ] = NEW_CARD_SHARE,
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

    Latency counts from each request's scheduled time, so queueing shows. The bodies are
    the transactions the online store has not seen yet (held back by `fraudctl backfill
    --hold-back-days 1`), with their own event times, so cards are scored with their
    history; the report says how many were (card_history_share) and the decision mix.
    Exits 1 when the SLO (p99 within --slo-p99-ms, zero errors) is missed; with --ramp, when none met it.

    Example: fraudctl backfill --hold-back-days 1 && fraudctl serve   # in another shell
    Example: fraudctl loadtest --rps 500 --duration 60 --slo-p99-ms 10
    Example: fraudctl loadtest --ramp --rps 500 --duration 10 --slo-p99-ms 50 --json
    """
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    settings = get_settings()  # where `fraudctl serve` listens by default
    url = url or f"http://{settings.serve_host}:{settings.serve_port}"
    try:
        data, after, warning = default_pool_source(settings, data, after)
        if warning:
            err.print(f"note: {escape(warning)}")
        pool = transaction_pool(pool_size, seed, data, after, new_card_share)
        if ramp_up:
            found = ramp(
                url, rps, duration, warmup, slo_p99_ms, ramp_factor, ramp_step, ramp_max, pool,
                max_connections=max_connections, timeout_s=timeout, progress=not as_json,
            )  # fmt: skip
            report, failure = found.as_dict(), "" if found.max_rps_meeting_slo else found.steps[0].reason()
        else:
            result = run_load(
                url, rps, duration, warmup, slo_p99_ms, pool, max_connections, timeout, progress=not as_json
            )
            report, failure = result.as_dict(), result.reason()
    except ValueError as error:  # DatasetError is a ValueError
        err.print(f"error: {escape(str(error))}")
        raise typer.Exit(1) from None
    # After the run, not before: the registry client's imports stay out of the measured client.
    try:
        in_training = training_decision_mix(settings, pool)
    except Exception as error:  # the registry is a comparison here, never a reason to fail
        err.print(f"note: no training decision mix to compare with ({type(error).__name__}: {error})")
        in_training = None
    report["training_decision_mix"] = in_training
    table = _ramp_table(found) if ramp_up else result_table(result, in_training)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        Console(highlight=False).print(table)
    if failure:
        err.print(f"SLO missed: {escape(failure)}")
        raise typer.Exit(1)
