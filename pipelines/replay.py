"""`fraudctl replay`: play a dataset into Kafka the way the payment gateway would.

The stream processor, the scoring service and monitoring need a live stream, not
parquet. Replay publishes each transaction to `transactions` (key: card) and each
label to `labels` (key: transaction id) when its `reported_at` comes due on the
replay's event-time clock, so no consumer learns a verdict before the transactions
that happened before it. Pacing is open-loop, like real traffic: the i-th transaction
is due at start + i / rps whether or not the broker kept up, and a replay that fell
behind catches up instead of stretching the schedule.

    fraudctl replay --from var/data --rps 500
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import typer
from kafka import KafkaProducer
from kafka.errors import KafkaError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from core import events
from core.dataset import read_labels, read_transactions
from core.settings import Settings, get_settings
from pipelines.kafka_clients import BrokerUnavailable, ensure_topics, producer, wait_until_ready

# The wire fields are the pydantic models', in their order: `scenario` (ground truth) stays home.
TRANSACTION_WIRE = pa.schema(
    [events.TRANSACTION_ARROW_SCHEMA.field(f) for f in events.Transaction.model_fields]
)
LABEL_WIRE = pa.schema([events.LABEL_ARROW_SCHEMA.field(f) for f in events.Label.model_fields])
CHUNK = 1_000  # transactions encoded at a time: 1M encoded at once would hold ~0.5 GB
Message = tuple[str, str, bytes]  # topic, key, value


class GatewayScorer:
    """Calls POST /v1/score before each transaction is published, as a payment gateway does.

    One keep-alive connection, one call at a time: the gateway waits for the decision
    before it forwards the authorization, so the replay's rate is bounded by the latency.
    Declined transactions are still published: the stream sees every authorization attempt.
    """

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        self.path = (parts.path.rstrip("/") or "") + "/v1/score"
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s
        )
        self.decisions: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.with_card_history = 0  # replies whose card's stored features were found and fresh

    def __call__(self, body: bytes) -> None:
        try:
            self.connection.request("POST", self.path, body, {"content-type": "application/json"})
            response = self.connection.getresponse()
            payload = response.read()
            if response.status == 200:
                reply = json.loads(payload)
                self.decisions[reply["decision"]] += 1
                self.with_card_history += "card" in reply.get("stored_features", ())
            else:
                self.errors[f"http_{response.status}"] += 1
        except (OSError, http.client.HTTPException) as error:
            self.errors[type(error).__name__] += 1
            self.connection.close()  # reconnects on the next request


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay published and how well it kept to its schedule."""

    transactions: int
    labels: int
    failed: int  # sends the broker did not acknowledge: anything but 0 is a failed replay
    seconds: float  # first send to the end of the final flush
    target_rps: float | None  # None: as fast as possible, or paced by event time
    speedup: float | None
    max_lag_seconds: float | None  # worst delay of a send behind its due time; None if unpaced
    first_error: str | None = None
    decisions: dict[str, int] | None = None  # with --score: decisions by band
    score_errors: dict[str, int] | None = None
    with_card_history: int | None = None  # with --score: scored with the card's stored history

    @property
    def achieved_rps(self) -> float:
        """Transactions per wall-clock second."""
        return self.transactions / self.seconds if self.seconds > 0 else 0.0


def interleave(event_us: np.ndarray, reported_us: np.ndarray) -> np.ndarray:
    """The publish order of transactions and labels, merged on time.

    Args:
        event_us: Transaction event times (µs since the epoch), sorted.
        reported_us: Label reported_at times (µs), sorted.

    Returns:
        One code per message in publish order: ``i`` for transaction i, ``~j`` (``-j - 1``)
        for label j. At equal times the transaction goes first: a verdict reported at t
        may concern the transaction at t.
    """
    times = np.concatenate([event_us, reported_us]).astype(np.int64)
    is_label = np.concatenate([np.zeros(len(event_us), np.int8), np.ones(len(reported_us), np.int8)])
    codes = np.concatenate([np.arange(len(event_us)), ~np.arange(len(reported_us))])
    return codes[np.lexsort((is_label, times))]  # lexsort is stable: ties keep their input order


def schedule(
    codes: np.ndarray, event_us: np.ndarray, reported_us: np.ndarray, rps: float, speedup: float | None
) -> np.ndarray | None:
    """Due time of each message in `codes`, in seconds from the start; None if unpaced.

    With `rps` only transactions are counted: a label is due with the transaction before
    it. With `speedup` each message is due at its own time, except labels reported after
    the last transaction: they are due with it, so the end does not wait days for them.
    """
    if speedup is None and rps == 0:
        return None
    is_tx = codes >= 0
    if speedup is None:
        return np.maximum(np.cumsum(is_tx) - 1, 0) / rps
    times = np.empty(len(codes), dtype=np.int64)
    times[is_tx] = event_us[codes[is_tx]]
    times[~is_tx] = np.minimum(reported_us[~codes[~is_tx]], event_us[-1])
    return (times - times[0]) / 1e6 / speedup


def plan(
    transactions: pd.DataFrame, labels: pd.DataFrame, rps: float = 0, speedup: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The publish order (see `interleave`) and the due times (see `schedule`)."""
    event_us = transactions["event_time"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    reported_us = labels["reported_at"].to_numpy(dtype="datetime64[us]").astype(np.int64)
    codes = interleave(event_us, reported_us)
    return codes, schedule(codes, event_us, reported_us, rps, speedup)


def _json_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """One column as JSON text: quoted strings, ISO-8601 UTC times, numbers, null."""
    if pa.types.is_timestamp(column.type):
        # Printing the UTC values without their zone is 6x faster than strftime, or than
        # printing with the zone. A µs timestamp always prints six decimals.
        naive = pc.cast(pc.cast(column, events.TIMESTAMP), pa.timestamp("us"))
        iso = pc.replace_substring(pc.cast(naive, pa.string()), " ", "T", max_replacements=1)
        text = pc.binary_join_element_wise('"', iso, 'Z"', "")
    elif pa.types.is_string(column.type):
        if pc.any(pc.match_substring_regex(column, r'["\\\x00-\x1f]')).as_py():
            # Rare (imported ids with quotes or control characters): let json escape them.
            text = pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
        else:
            text = pc.binary_join_element_wise('"', column, '"', "")
    else:  # Arrow prints the shortest float that round-trips (68.82, 1e-7, 100), true/false
        text = pc.cast(column, pa.string())
    return pc.fill_null(text, "null")


def wire_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame's wire fields as Arrow (1M transactions: ~1.2 s, so done before the clock)."""
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def encode(table: pa.Table) -> list[bytes]:
    """Event JSON (UTF-8), one value per row, built column-wise in Arrow.

    ~5.5 µs a row, half of what ``json.dumps`` of a dict per row takes, and it runs on
    the thread that sends. Missing optional fields are null, never omitted.
    """
    pieces: list[Any] = []
    for i, name in enumerate(table.schema.names):
        pieces += [("{" if i == 0 else ", ") + json.dumps(name) + ": ", _json_column(table.column(name))]
    return list(pc.cast(pc.binary_join_element_wise(*pieces, "}", ""), pa.binary()).to_pylist())


def messages(transactions: pd.DataFrame, labels: pd.DataFrame, codes: np.ndarray) -> Iterator[Message]:
    """(topic, key, value) in the publish order `codes`, encoding a chunk at a time.

    A chunk stalls the sends while it is encoded (5 ms for 1,000), so chunks are small.
    """
    table, card_ids = wire_table(transactions, TRANSACTION_WIRE), transactions["card_id"].tolist()
    label_values, label_ids = encode(wire_table(labels, LABEL_WIRE)), labels["transaction_id"].tolist()
    chunk, chunk_start = list[bytes](), 0
    for code in codes.tolist():
        if code < 0:
            yield events.LABELS_TOPIC, label_ids[~code], label_values[~code]
            continue
        if code >= chunk_start + len(chunk):  # transactions come in index order
            chunk_start += len(chunk)
            chunk = encode(table.slice(chunk_start, CHUNK))
        yield events.TRANSACTIONS_TOPIC, card_ids[code], chunk[code - chunk_start]


def load(
    data_dir: Path,
    limit: int | None,
    labels_after_end: bool,
    after: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    dataset: tuple[pd.DataFrame, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The transactions to publish, and the labels due before the last of them (or after).

    With `limit`, only the published transactions' labels are published after the end:
    a verdict on a transaction the stream never saw is noise. With `after`, only what
    happened after that time: transactions after it, labels reported after it. With
    `until`, only what happened up to it (a drill replays its days in slices). `dataset`
    is the data_dir's transactions and labels already read, as `read_transactions` and
    `read_labels` return them (a drill's 36 slices would read them 36 times: ~0.3 s each).
    """
    transactions, labels = dataset or (read_transactions(data_dir), read_labels(data_dir))
    if after is not None:
        transactions = transactions[transactions["event_time"] > after].reset_index(drop=True)
        labels = labels[labels["reported_at"] > after].reset_index(drop=True)
    if until is not None:
        transactions = transactions[transactions["event_time"] <= until].reset_index(drop=True)
        labels = labels[labels["reported_at"] <= until].reset_index(drop=True)
    transactions = transactions if limit is None else transactions.iloc[:limit].reset_index(drop=True)
    if transactions.empty:
        where = "" if after is None else f" after {after:%Y-%m-%d %H:%M} UTC"
        raise ValueError(f"{data_dir} holds no transactions{where}")
    after_end = labels["reported_at"] > transactions["event_time"].iloc[-1]
    wanted = after_end & labels_after_end
    if limit is not None:
        wanted &= labels["transaction_id"].isin(transactions["transaction_id"])
    return transactions, labels[~after_end | wanted].reset_index(drop=True)


def shifted(
    transactions: pd.DataFrame, labels: pd.DataFrame, days: float, id_suffix: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same traffic `days` later under new ids: a looping gateway's next pass is new
    traffic (the stream processor and the monitor drop a resent id as a duplicate, and the
    scoring service reads a resent transaction's features as written after it)."""
    shift = pd.Timedelta(days=days)
    transactions = transactions.assign(
        event_time=transactions["event_time"] + shift,
        transaction_id=transactions["transaction_id"] + id_suffix,
    )
    labels = labels.assign(
        reported_at=labels["reported_at"] + shift, transaction_id=labels["transaction_id"] + id_suffix
    )
    return transactions, labels


def replay(
    data_dir: Path,
    settings: Settings,
    rps: float = 0,
    speedup: float | None = None,
    limit: int | None = None,
    progress: bool = False,
    labels_after_end: bool = True,
    score_url: str | None = None,
    after: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    wait_readable: Callable[[int], None] | None = None,
    dataset: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    shift_days: float = 0.0,
    id_suffix: str = "",
) -> ReplaySummary:
    """Publish a dataset's transactions and labels to Kafka, merged by time and paced.

    Args:
        data_dir: A dataset that `fraudctl simulate` or `fraudctl import` wrote.
        settings: Where the broker is (`kafka_bootstrap`) and the topics' partitions.
        rps: Target transactions per wall-clock second; 0 publishes as fast as possible.
        speedup: Pace by event time instead, this many times faster than real time.
        limit: Publish only the first N transactions and the labels due before the last.
        progress: Show a progress bar with the achieved rate and the lag.
        labels_after_end: Publish at the end the labels reported after the last transaction.
        score_url: Score each transaction at this scoring service before publishing it.
        after: Start after this time (e.g. the online store's cut, `backfill --hold-back-days`).
        until: Stop at this time (transactions and labels up to it).
        wait_readable: With `score_url`, called with the number of transactions published
            so far before a card's next transaction is scored while its previous one may
            not be readable online yet; it returns once the stream processor has made that
            many readable. A replay compresses hours into milliseconds: without the wait, a
            card's features would be stale in a way that real time (minutes between a
            card's payments, freshness under a second) never makes them, and the staleness
            would depend on how busy the machine is.
        dataset: data_dir's transactions and labels, already read (see `load`).
        shift_days, id_suffix: Publish the selected traffic this many days later, with
            this suffix on every transaction id (see `shifted`; `after` and `until` select
            before the shift).

    Returns:
        Counts, timing and the number of failed sends: check `failed`, it is not raised.

    Raises:
        ValueError: Bad arguments or an empty dataset (DatasetError if there is none).
        BrokerUnavailable: No broker answered at `settings.kafka_bootstrap`.
        KafkaError: A send could not even be queued (the broker went away mid-replay).
    """
    if not 0 <= rps < math.inf:
        raise ValueError(f"--rps must be 0 (as fast as possible) or positive, got {rps}")
    if speedup is not None and (rps or not 0 < speedup < math.inf):
        raise ValueError(f"--speedup must be positive and without --rps, got {speedup} with {rps}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    transactions, labels = load(Path(data_dir), limit, labels_after_end, after, until, dataset)
    if shift_days or id_suffix:
        transactions, labels = shifted(transactions, labels, shift_days, id_suffix)
    codes, due = plan(transactions, labels, rps, speedup)
    wait_until_ready(settings.kafka_bootstrap, timeout_s=10)
    ensure_topics(settings)
    columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"))
    scorer = GatewayScorer(score_url) if score_url else None
    with Progress(*columns, disable=not progress, transient=True) as bar, producer(settings) as out:
        seconds, max_lag, errors = _publish(
            out, messages(transactions, labels, codes), due, bar, len(transactions), scorer, wait_readable
        )
    return ReplaySummary(
        transactions=len(transactions),
        labels=len(labels),
        failed=len(errors),
        seconds=seconds,
        target_rps=rps or None,
        speedup=speedup,
        max_lag_seconds=None if due is None else max_lag,
        first_error=repr(errors[0]) if errors else None,
        decisions=dict(scorer.decisions) if scorer else None,
        score_errors=dict(scorer.errors) if scorer else None,
        with_card_history=scorer.with_card_history if scorer else None,
    )


def _publish(
    out: KafkaProducer,
    stream: Iterator[Message],
    due: np.ndarray | None,
    bar: Progress,
    total: int,
    scorer: GatewayScorer | None = None,
    wait_readable: Callable[[int], None] | None = None,
) -> tuple[float, float, list[BaseException]]:
    """The hot loop: send each message when due, then flush.

    Returns:
        Seconds from the first send to the end of the flush, the max lag, the failures.
    """
    errors: list[BaseException] = []  # the producer's I/O thread appends too; append is atomic
    task = bar.add_task("replay", total=total, stats="")
    due_list = None if due is None else due.tolist()  # floats: indexing numpy is slow here
    # Trap: the first message would otherwise be late by the Arrow conversion and the
    # first metadata request (~50 ms), and that would be the max lag of every run.
    stream = itertools.chain([next(stream)], stream)
    out.partitions_for(events.TRANSACTIONS_TOPIC)
    out.partitions_for(events.LABELS_TOPIC)
    started, done, late, max_lag, shown = time.perf_counter(), 0, 0.0, 0.0, 0.0
    unconfirmed: set[str] = set()  # cards published since the stream last confirmed all
    for k, (topic, key, value) in enumerate(stream):
        now = time.perf_counter() - started
        if due_list is not None:
            late = now - due_list[k]
            if late < 0:
                time.sleep(-late)  # ahead of schedule. Behind it: no sleep, catch up.
            max_lag = max(max_lag, late)
        # A send that fails at once (the buffer stayed full for max_block_ms: the broker is
        # gone) raises, or a dead broker would cost a minute per message.
        if scorer is not None and topic == events.TRANSACTIONS_TOPIC:
            if wait_readable is not None:
                if key in unconfirmed:
                    out.flush()
                    wait_readable(done)
                    unconfirmed.clear()
                unconfirmed.add(key)
            scorer(value)
        out.send(topic, key=key, value=value).add_errback(errors.append)
        done += topic == events.TRANSACTIONS_TOPIC
        if now - shown > 0.25 and not bar.disable:
            lag, shown = ("" if due_list is None else f"  lag {max(late, 0) * 1000:,.0f} ms"), now
            bar.update(task, completed=done, stats=f"{done / now:,.0f} tx/s{lag}")
    out.flush()  # returns when every batch is acknowledged or has failed (delivery timeout)
    return time.perf_counter() - started, max_lag, errors


UTC_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]


def cli(
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Dataset (simulate/import output).", show_default="FRAUD_VAR_DIR/data"),
    ] = None,
    rps: Annotated[
        float | None, typer.Option(help="Transactions per second; 0 = as fast as possible.", show_default="0")
    ] = None,
    speedup: Annotated[
        float | None, typer.Option(help="Pace by event time, X times faster than real time (not with --rps).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Publish only the first N transactions.")] = None,
    labels_after_end: Annotated[
        bool,
        typer.Option(
            "--labels-after-end/--no-labels-after-end",
            help="Publish at the end the labels reported after the last transaction.",
        ),
    ] = True,
    score: Annotated[
        str | None,
        typer.Option(
            help="Score each transaction at this scoring service first, e.g. http://127.0.0.1:8000."
        ),
    ] = None,
    after: Annotated[
        datetime | None,
        typer.Option(
            help="Only what happened after this UTC time, e.g. the online store's cut "
            "(`fraudctl backfill --hold-back-days 1` prints it).",
            formats=UTC_TIME_FORMATS,
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            help="Only what happened up to this UTC time, e.g. the history before the online store's "
            "cut, which the stream processors rebuild their state from.",
            formats=UTC_TIME_FORMATS,
        ),
    ] = None,
    shift_days: Annotated[
        float,
        typer.Option(help="Publish the traffic this many days later (a looping gateway's next pass)."),
    ] = 0.0,
    id_suffix: Annotated[
        str, typer.Option(help="Append this to every transaction id (with --shift-days: new traffic).")
    ] = "",
) -> None:
    """Play a dataset into Kafka as the payment gateway would: transactions, and labels when due.

    Example: fraudctl replay --from var/data --rps 500 --limit 100000
    Example: fraudctl replay --score http://127.0.0.1:8000 --after 2026-02-11   # the held-back day
    Example: fraudctl replay --until 2026-02-11 --no-labels-after-end           # the history before it
    """
    err, settings = Console(stderr=True, soft_wrap=True, highlight=False), get_settings()
    try:
        if rps is not None and speedup is not None:
            raise ValueError("use --rps or --speedup, not both")
        data_dir = settings.demo_data_dir if source is None else source
        since = None if after is None else pd.Timestamp(after, tz="UTC")
        end = None if until is None else pd.Timestamp(until, tz="UTC")
        summary = replay(
            data_dir, settings, rps or 0, speedup, limit, True, labels_after_end, score, since, until=end,
            shift_days=shift_days, id_suffix=id_suffix,
        )  # fmt: skip
    except BrokerUnavailable as error:
        err.print(f"error: {escape(str(error))}; start one with `fraudctl broker`")
        raise typer.Exit(1) from None
    except (ValueError, KafkaError, OSError) as error:  # DatasetError is a ValueError
        err.print(f"error: {escape(str(error))}")
        raise typer.Exit(1) from None
    table = Table(title="replay", show_header=False)
    target = f" (target {summary.target_rps:,.0f})" if summary.target_rps else ""
    lag = "-" if summary.max_lag_seconds is None else f"{summary.max_lag_seconds * 1000:,.1f} ms"
    table.add_row("transactions", f"{summary.transactions:,}")
    table.add_row("labels", f"{summary.labels:,}")
    table.add_row("seconds", f"{summary.seconds:,.2f}")
    table.add_row("achieved rps", f"{summary.achieved_rps:,.0f}{target}")
    table.add_row("max lag", lag)
    table.add_row("failed sends", f"{summary.failed:,}")
    if summary.decisions is not None:
        table.add_row("decisions", ", ".join(f"{k} {v:,}" for k, v in sorted(summary.decisions.items())))
        table.add_row("with card history", f"{summary.with_card_history or 0:,}")
        table.add_row(
            "scoring errors", ", ".join(f"{k} {v:,}" for k, v in (summary.score_errors or {}).items()) or "0"
        )
    Console(highlight=False).print(table)
    if summary.failed:
        sent, first = summary.transactions + summary.labels, escape(str(summary.first_error))
        err.print(f"error: {summary.failed:,} of {sent:,} sends failed (first: {first})")
        raise typer.Exit(1)
