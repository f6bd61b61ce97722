"""`fraudctl stream` for real: a Tansu broker, Feast's SQLite online store, parquet parts.

The reference is the batch backfill of the same dataset: the stream must leave the online
store holding exactly what the backfill materializes, whatever the delivery (duplicates,
a processor killed mid-stream, two processors sharing the partitions, poison records).

Every end-to-end test gets a broker of its own (Tansu keeps everything in memory and
starts in ~0.2 s), so no test sees another's records, offsets or consumer group, and a
Feast store of its own (var_dir and project). The dataset and its backfill are shared.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition

from core.dataset import read_labels, read_transactions
from core.events import DEAD_LETTER_TOPIC, LABELS_TOPIC, TRANSACTIONS_TOPIC, Label, Transaction
from core.feature_engine import (
    CARD_VIEW,
    DEVICE_VIEW,
    MERCHANT_VIEW,
    SNAPSHOT_TIME_COLUMN,
    FeatureEngine,
)
from core.features import DAY, Txn, to_us
from core.settings import PROJECT_ROOT, Settings
from feature_repo.data_sources import CREATED_COLUMN, offline_dir_of
from feature_repo.store import open_store, read_online, scoring_service
from pipelines import replay as rp
from pipelines import simulate
from pipelines.backfill import backfill
from pipelines.broker import EmbeddedBroker
from pipelines.feature_writer import VIEW_COLUMNS
from pipelines.kafka_clients import admin, partition_for, producer
from pipelines.stream import GROUP_ID, StreamProcessor, StreamSummary
from pipelines.stream_tasks import MerchantTask

PARAMS = simulate.SimulationParams(days=5, cards=300, merchants=40, seed=11, fraud_rate=0.02)
PARTITIONS = 4  # the settings' default: the processors and the broker agree on it
IDLE_EXIT_S = 4.0  # Tansu answers a JoinGroup after ~3 s; idle time only counts once records came
MAX_RUN_S = 120.0  # a processor still running after this is hung: the test fails
FRAUDCTL = [sys.executable, "-c", "from core.cli import main; main()"]


# --- fixtures ------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The dataset and what the batch backfill made of it (the expected stream result)."""

    data_dir: Path
    transactions: pd.DataFrame
    labels: pd.DataFrame
    entities: list[tuple[str, str | None, str | None]]  # (card, merchant, device) to read online
    online: list[dict[str, Any]]  # read_online of each entity, from the backfilled store
    offline: dict[str, pd.DataFrame]  # the backfill's offline rows per view, as written


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    data_dir = tmp_path_factory.mktemp("stream-data") / "five-days"
    simulate.run(data_dir, PARAMS)
    transactions, labels = read_transactions(data_dir), read_labels(data_dir)
    settings = Settings(
        profile="embedded",
        var_dir=tmp_path_factory.mktemp("stream-backfill") / "var",
        feast_project=f"stream_ref_{uuid.uuid4().hex[:8]}",
    )
    backfill(data_dir, settings)
    entities = _entities(transactions)
    store = open_store(settings)
    service = scoring_service(store)
    online = [read_online(store, card, merchant, device, service) for card, merchant, device in entities]
    # The comparison means something only if the backfill holds every entity the data names.
    known = [(e, o) for e, o in zip(entities, online, strict=True) if not e[0].startswith("c_never")]
    assert all(o["card"] is not None for _, o in known)
    assert all(o["merchant"] is not None for (_, m, _), o in known if m is not None)
    assert all(o["device"] is not None for (_, _, d), o in known if d is not None)
    offline = {view: pd.read_parquet(offline_dir_of(settings.offline_dir, view)) for view in VIEW_COLUMNS}
    return Reference(data_dir, transactions, labels, entities, online, offline)


def _entities(transactions: pd.DataFrame) -> list[tuple[str, str | None, str | None]]:
    """Every card with the merchant and device of its latest transaction; then every merchant
    and device not named yet; then an entity no store has."""
    latest = transactions.groupby("card_id", sort=True).tail(1).sort_values("card_id")
    with_device = transactions.dropna(subset=["device_id"]).groupby("card_id")["device_id"].last()
    rows: list[tuple[str, str | None, str | None]] = [
        (card, merchant, with_device.get(card))
        for card, merchant in zip(latest["card_id"], latest["merchant_id"], strict=True)
    ]
    any_card = rows[0][0]
    named_merchants, named_devices = {m for _, m, _ in rows}, {d for _, _, d in rows}
    rows += [(any_card, m, None) for m in sorted(set(transactions["merchant_id"]) - named_merchants)]
    rows += [(any_card, None, d) for d in sorted(set(transactions["device_id"].dropna()) - named_devices)]
    rows.append(("c_never_seen", "m_never_seen", "d_never_seen"))
    return rows


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A fresh Tansu per test: its own topics, offsets and groups."""
    with EmbeddedBroker(Settings(profile="embedded", var_dir=tmp_path / "broker"), "127.0.0.1:0") as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path, broker: EmbeddedBroker) -> Settings:
    """The stream's settings: the test's broker, a Feast store of its own."""
    return Settings(
        profile="embedded",
        var_dir=tmp_path / "var",
        feast_project=f"stream_{uuid.uuid4().hex[:8]}",
        kafka_bootstrap=broker.bootstrap,
        transactions_partitions=PARTITIONS,
    )


# --- helpers ------------------------------------------------------------------------------------
def _run_processor(settings: Settings, idle_exit_s: float = IDLE_EXIT_S, **options: Any) -> StreamSummary:
    processor = StreamProcessor(settings, commit_interval_s=options.pop("commit_interval_s", 0.5), **options)
    summary = processor.run(idle_exit_s=idle_exit_s, max_seconds=MAX_RUN_S)
    assert summary.seconds < MAX_RUN_S - 1, "the processor never went idle"
    return summary


def _assert_online_equals_reference(settings: Settings, ref: Reference) -> None:
    store = open_store(settings)
    service = scoring_service(store)
    mismatches = []
    for entity, expected in zip(ref.entities, ref.online, strict=True):
        got = read_online(store, *entity, service)
        if got != expected:
            mismatches.append((entity, {k: (expected[k], got[k]) for k in got if got[k] != expected[k]}))
    assert not mismatches, f"{len(mismatches)} of {len(ref.entities)} entities differ; first: {mismatches[0]}"


def _stream_parts(settings: Settings, view: str) -> dict[Path, pd.DataFrame]:
    folder = offline_dir_of(settings.offline_dir, view)
    return {part: pd.read_parquet(part) for part in sorted(folder.glob("*.parquet"))}


def _effective(frame: pd.DataFrame, view: str) -> pd.DataFrame:
    """What Feast reads: per (entity, snapshot time) the row created last; lists as tuples."""
    key = VIEW_COLUMNS[view][0]
    frame = frame.sort_values(CREATED_COLUMN, kind="stable")
    frame = frame.drop_duplicates([key, SNAPSHOT_TIME_COLUMN], keep="last").drop(columns=[CREATED_COLUMN])
    frame = frame.sort_values([key, SNAPSHOT_TIME_COLUMN], ignore_index=True)
    for column in frame.columns:
        if frame[column].dtype == object:  # lists come back from parquet as numpy arrays
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else tuple(v))
    return frame


def _assert_offline_equals_reference(settings: Settings, ref: Reference, view: str) -> None:
    parts = _stream_parts(settings, view)
    assert parts, f"no offline parts for {view}"
    stream = _effective(pd.concat(parts.values(), ignore_index=True), view)
    pd.testing.assert_frame_equal(stream, _effective(ref.offline[view], view), check_exact=True)


def _assert_card_parts_tile_the_partitions(settings: Settings, ref: Reference) -> None:
    """Card parts neither double nor lose a row: each part of transactions[p] that starts at
    offset s holds one row per transaction in [s, next part's start), and they end at p's end."""
    per_partition = ref.transactions["card_id"].map(lambda c: partition_for(c, PARTITIONS)).value_counts()
    starts: dict[int, list[tuple[int, int]]] = {}
    for part, frame in _stream_parts(settings, CARD_VIEW).items():
        topic_partition, start = part.stem.rsplit("-", 1)
        topic, partition = topic_partition.rsplit("-", 1)
        assert topic == TRANSACTIONS_TOPIC, part.name
        starts.setdefault(int(partition), []).append((int(start), len(frame)))
    assert sorted(starts) == sorted(per_partition.index)
    for partition, parts in starts.items():
        parts.sort()
        ends = [start for start, _ in parts[1:]] + [int(per_partition[partition])]
        assert parts[0][0] == 0, (partition, parts)
        assert [rows for _, rows in parts] == [
            end - start for (start, _), end in zip(parts, ends, strict=True)
        ]


def _assert_merchant_offline_as_far_as_it_holds(settings: Settings, ref: Reference) -> None:
    """Merchant rows: no day the backfill lacks, and each merchant's latest row is the backfill's.

    Not row for row: when the processor catches up on a backlog, one card partition's envelope
    carries days of events, so a merchant task passes several midnights before the other card
    partitions' events of those days arrive. A late event corrects only the latest snapshot
    (LATENESS_ALLOWED is a day), so older days keep what was known when they were emitted.
    """
    stream = _effective(
        pd.concat(_stream_parts(settings, MERCHANT_VIEW).values(), ignore_index=True), MERCHANT_VIEW
    )
    expected = _effective(ref.offline[MERCHANT_VIEW], MERCHANT_VIEW)
    keys = ["merchant_id", SNAPSHOT_TIME_COLUMN]
    assert set(map(tuple, stream[keys].to_numpy())) <= set(map(tuple, expected[keys].to_numpy()))
    latest = [frame.groupby("merchant_id").tail(1).reset_index(drop=True) for frame in (stream, expected)]
    pd.testing.assert_frame_equal(latest[0], latest[1], check_exact=True)


def _send(settings: Settings, records: list[tuple[str, str, bytes | None]]) -> list[Any]:
    """Produce (topic, key, value) in order; returns each record's metadata (partition, offset)."""
    with closing(producer(settings)) as out:
        futures = [out.send(topic, key=key, value=value) for topic, key, value in records]
        out.flush(timeout=10)
        return [future.get(timeout=10) for future in futures]


def _read_topic(settings: Settings, topic: str, expected: int, timeout_s: float = 20) -> list[Any]:
    """Every record of a topic (waits for `expected`, then half a second for any extra)."""
    reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    records: list[Any] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        deadline, grace_end = time.monotonic() + timeout_s, None
        while time.monotonic() < (grace_end or deadline):
            for batch in reader.poll(timeout_ms=100).values():
                records += batch
            if grace_end is None and len(records) >= expected:
                grace_end = time.monotonic() + 0.5
    finally:
        reader.close()
    return records


def _committed(settings: Settings) -> dict[int, int]:
    """The group's committed offset of each `transactions` partition (0: none yet)."""
    with closing(admin(settings)) as client:
        offsets = client.list_group_offsets({GROUP_ID: None}).get(GROUP_ID, {})
    return {
        p: max(0, meta.offset)
        for p in range(PARTITIONS)
        if (meta := offsets.get(TopicPartition(TRANSACTIONS_TOPIC, p))) is not None
    }


def _lost_at_kill(settings: Settings, ref: Reference, committed: dict[int, int]) -> int:
    """Cards whose online row is newer than their last committed transaction: work a killed
    processor wrote online but never committed (its partition's offsets were not moved past it)."""
    txns = ref.transactions.assign(p=ref.transactions["card_id"].map(lambda c: partition_for(c, PARTITIONS)))
    # Replay publishes in frame order, so the k-th transaction of partition p is at offset k.
    done = txns[txns.groupby("p").cumcount() < txns["p"].map(lambda p: committed.get(p, 0))]
    last_done = done.groupby("card_id")["event_time"].max().map(to_us)
    store, lost = open_store(settings), 0
    service = scoring_service(store)
    for card in sorted(set(txns["card_id"])):
        online = read_online(store, card, service=service)["card"]
        lost += online is not None and online["card_last_txn_at_us"] > last_done.get(card, -1)
    return lost


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread; the dict gets its "result" or its "error"."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = target()
        except BaseException as error:  # re-raised by the test
            out["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def _result(thread: threading.Thread, out: dict[str, Any], timeout_s: float = MAX_RUN_S) -> Any:
    thread.join(timeout_s)
    assert not thread.is_alive(), "thread still running"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting for {what}"
        time.sleep(0.05)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _txn(tid: str, card: str, merchant: str, at: datetime, amount: float = 20.0, **fields: Any) -> bytes:
    values = {
        "transaction_id": tid,
        "event_time": at,
        "card_id": card,
        "merchant_id": merchant,
        "merchant_country": "US",
        "channel": "card_present",
        "amount": amount,
    }
    return Transaction(**{**values, **fields}).model_dump_json().encode()


def _label(tid: str, card: str, reported: datetime, is_fraud: bool = True) -> bytes:
    return (
        Label(transaction_id=tid, card_id=card, is_fraud=is_fraud, reported_at=reported)
        .model_dump_json()
        .encode()
    )


# --- 1. end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_stream_equals_the_backfill_online_and_offline(settings: Settings, reference: Reference) -> None:
    published = rp.replay(reference.data_dir, settings)
    assert published.failed == 0 and published.transactions == len(reference.transactions)

    summary = _run_processor(settings)

    n, labels = len(reference.transactions), len(reference.labels)
    assert summary.balanced(), summary
    assert summary.dead_lettered == {}
    assert summary.consumed[TRANSACTIONS_TOPIC] == summary.tasks.transactions_applied == n
    assert summary.tasks.transactions_duplicate == 0
    assert summary.consumed[LABELS_TOPIC] == summary.labels_routed == labels
    assert summary.tasks.labels_forwarded + summary.tasks.labels_unmatched == labels
    _assert_online_equals_reference(settings, reference)
    _assert_offline_equals_reference(settings, reference, CARD_VIEW)
    _assert_offline_equals_reference(settings, reference, DEVICE_VIEW)
    _assert_card_parts_tile_the_partitions(settings, reference)
    _assert_merchant_offline_as_far_as_it_holds(settings, reference)


# --- 2. duplicate delivery ------------------------------------------------------------------------
@pytest.mark.slow
def test_duplicates_are_counted_and_change_nothing(settings: Settings, reference: Reference) -> None:
    assert rp.replay(reference.data_dir, settings).failed == 0
    # A producer retrying without idempotence: every 7th transaction again, right away.
    again = reference.transactions.iloc[::7]
    values = rp.encode(rp.wire_table(again, rp.TRANSACTION_WIRE))
    _send(settings, [(TRANSACTIONS_TOPIC, c, v) for c, v in zip(again["card_id"], values, strict=True)])
    assert rp.replay(reference.data_dir, settings).failed == 0  # and the whole stream once more

    summary = _run_processor(settings)

    n, duplicates = len(reference.transactions), len(reference.transactions) + len(again)
    assert summary.balanced(), summary
    assert summary.dead_lettered == {}
    assert summary.consumed[TRANSACTIONS_TOPIC] == n + duplicates
    assert summary.tasks.transactions_applied == n
    assert summary.tasks.transactions_duplicate == duplicates
    _assert_online_equals_reference(settings, reference)
    _assert_offline_equals_reference(settings, reference, CARD_VIEW)  # a duplicate writes no row
    _assert_offline_equals_reference(settings, reference, DEVICE_VIEW)


# --- 3. a processor killed mid-stream ----------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_processor_restarts_to_the_same_state(
    settings: Settings, reference: Reference, tmp_path: Path
) -> None:
    n = len(reference.transactions)
    env = {
        **os.environ,
        "FRAUD_PROFILE": "embedded",
        "FRAUD_VAR_DIR": str(settings.var_dir),
        "FRAUD_FEAST_PROJECT": settings.feast_project,
        "FRAUD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FRAUD_TRANSACTIONS_PARTITIONS": str(PARTITIONS),
    }
    command = [*FRAUDCTL, "stream", "--idle-exit", "6", "--metrics-port", "-1", "--commit-interval", "0.5"]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait_for(
            lambda: "assigned transactions" in log.read_text() or first.poll() is not None, 60, "the join"
        )
        assert first.poll() is None, log.read_text()
        # ~8 s of publishing; the kill comes once a quarter of it is committed, half a commit
        # interval after a commit, when the processor holds work it wrote online but not committed.
        replaying, replayed = _in_thread(lambda: rp.replay(reference.data_dir, settings, rps=300))
        _wait_for(
            lambda: sum(_committed(settings).values()) >= n // 4 or not replaying.is_alive(), 30, "commits"
        )
        time.sleep(0.25)
        assert replaying.is_alive(), "the replay ended before the kill: not mid-stream"
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    committed = _committed(settings)  # final: nobody commits for the group now
    committed_at_kill = sum(committed.values())
    assert n // 4 <= committed_at_kill < n
    assert _result(replaying, replayed).failed == 0
    assert _lost_at_kill(settings, reference, committed) > 0, "nothing uncommitted to redo"

    summary = _run_processor(settings)

    assert summary.balanced(), summary
    assert summary.dead_lettered == {}
    # The second processor rebuilt [0, committed) and consumed the rest: nothing lost, nothing twice.
    assert summary.consumed[TRANSACTIONS_TOPIC] == n - committed_at_kill
    assert summary.tasks.transactions_applied == n - committed_at_kill
    assert summary.tasks.transactions_duplicate == 0
    _assert_online_equals_reference(settings, reference)
    _assert_offline_equals_reference(settings, reference, CARD_VIEW)
    _assert_offline_equals_reference(settings, reference, DEVICE_VIEW)
    _assert_card_parts_tile_the_partitions(settings, reference)


# --- 4. poison records -------------------------------------------------------------------------------
@pytest.mark.slow
def test_poison_records_go_to_the_dead_letter_topic_and_the_stream_goes_on(settings: Settings) -> None:
    card, merchant = "c_poison", "m_poison"
    at = [T0 + timedelta(minutes=i) for i in range(6)]
    good = [_txn(f"t_ok_{i}", card, merchant, at[i], amount=10.0 + i) for i in range(6)]
    valid = json.loads(good[0])
    poison_transactions = {
        "Invalid JSON": b'{"transaction_id": "t_broken", ',
        "amount": json.dumps({**valid, "transaction_id": "t_negative", "amount": -5}).encode(),
        "merchant_id": json.dumps(
            {k: v for k, v in valid.items() if k != "merchant_id"} | {"transaction_id": "t_nomerchant"}
        ).encode(),
        # valid alone, but older than the card's latest transaction
        "event_time is before the card's latest": _txn("t_late", card, merchant, at[0] - timedelta(hours=1)),
        "JSON input should be string": None,  # a tombstone: a key without a value
    }
    bad_label = json.dumps(
        {"transaction_id": "t_ok_1", "card_id": card, "is_fraud": "maybe", "reported_at": "2026-01-02"}
    ).encode()
    records: list[tuple[str, str, bytes | None]] = [(TRANSACTIONS_TOPIC, card, v) for v in good[:3]]
    records += [(TRANSACTIONS_TOPIC, card, v) for v in poison_transactions.values()]
    records += [(LABELS_TOPIC, "t_ok_1", bad_label)]
    records += [(TRANSACTIONS_TOPIC, card, v) for v in good[3:]]
    records += [(LABELS_TOPIC, "t_ok_1", _label("t_ok_1", card, at[5] + timedelta(hours=1)))]
    metadata = _send(settings, records)

    summary = _run_processor(settings)

    assert summary.balanced(), summary
    assert summary.dead_lettered == {TRANSACTIONS_TOPIC: len(poison_transactions), LABELS_TOPIC: 1}
    assert summary.tasks.transactions_applied == len(good)
    assert summary.labels_routed == summary.tasks.labels_forwarded == 1

    dead = _read_topic(settings, DEAD_LETTER_TOPIC, len(poison_transactions) + 1)
    # Each dead letter names its source record; the poison sent is what must come back, once.
    reasons = {value: reason for reason, value in poison_transactions.items()} | {bad_label: "is_fraud"}
    poison = {
        (meta.topic, meta.partition, meta.offset): value
        for (_, _, value), meta in zip(records, metadata, strict=True)
        if value in reasons
    }
    found = {}
    for record in dead:
        headers = {name: raw.decode() for name, raw in record.headers}
        source = (headers["source_topic"], int(headers["source_partition"]), int(headers["source_offset"]))
        assert source in poison and source not in found, (source, headers)
        found[source] = record.value
        assert reasons[record.value] in headers["error"], headers["error"]
        if record.value == bad_label:
            assert "reported_at" in headers["error"]  # the label's second bad field is named too
    assert found == poison

    # The transactions after the poison were applied: the card's online row is the sixth's.
    snapshot = read_online(open_store(settings), card)["card"]
    assert snapshot is not None
    assert snapshot["card_last_txn_at_us"] == to_us(at[5])
    assert snapshot["card_txn_count_1h"] == len(good)
    assert snapshot["card_amount_max_1h"] == 15.0


# --- 5. two processors share the partitions ---------------------------------------------------------
@pytest.mark.slow
def test_two_processors_split_the_partitions_and_agree_with_the_backfill(
    settings: Settings, reference: Reference
) -> None:
    # The second processor joins mid-stream: the group rebalances while records flow.
    first = StreamProcessor(settings, commit_interval_s=0.5)
    running_first, first_out = _in_thread(lambda: first.run(idle_exit_s=8, max_seconds=MAX_RUN_S))
    _wait_for(lambda: bool(first.card_tasks), 30, "the first's partitions")
    replaying, replayed = _in_thread(lambda: rp.replay(reference.data_dir, settings, rps=200))  # ~12 s
    _wait_for(lambda: first.summary.consumed.get(TRANSACTIONS_TOPIC, 0) > 0, 30, "the first's records")
    second = StreamProcessor(settings, commit_interval_s=0.5)
    running_second, second_out = _in_thread(lambda: second.run(idle_exit_s=8, max_seconds=MAX_RUN_S))
    _wait_for(lambda: bool(second.card_tasks), 30, "the second's partitions")
    assert replaying.is_alive(), "the replay ended before the second processor joined"
    assert _result(replaying, replayed).failed == 0
    summaries = [_result(running_first, first_out), _result(running_second, second_out)]

    n = len(reference.transactions)
    for summary in summaries:
        assert summary.balanced(), summary
        assert summary.dead_lettered == {}
        assert summary.consumed[TRANSACTIONS_TOPIC] > 0, summary
    # At least once: work a processor gave up uncommitted in the rebalance is redone by the next owner.
    assert sum(s.tasks.transactions_applied for s in summaries) >= n
    assert sum(s.tasks.transactions_duplicate for s in summaries) == 0
    _assert_online_equals_reference(settings, reference)
    _assert_offline_equals_reference(settings, reference, CARD_VIEW)
    _assert_offline_equals_reference(settings, reference, DEVICE_VIEW)
    _assert_card_parts_tile_the_partitions(settings, reference)


# --- 6. late labels ---------------------------------------------------------------------------------
def _day(n: int) -> int:
    return to_us(T0) + n * DAY


def _merchant_rows(rows: list[tuple[str, str, int, dict[str, Any]]], merchant: str) -> dict[int, dict]:
    """The last snapshot emitted per day for a merchant (what a reader sees)."""
    return {t: snap for view, entity, t, snap in rows if view == MERCHANT_VIEW and entity == merchant}


def test_a_label_counts_in_the_merchant_fraud_rate_from_its_reported_at_on() -> None:
    rows: list[tuple[str, str, int, dict[str, Any]]] = []
    engine = FeatureEngine(sink=lambda *row: rows.append(row))
    for i in range(3):  # day 0: three transactions at the merchant
        engine.add_transaction(
            Txn(f"t{i}", _day(0) + (10 + i) * 3600 * 10**6, f"c{i}", "m", "US", "card_present", 20.0)
        )
    engine.add_label("t0", True, _day(10) + 12 * 3600 * 10**6)  # reported at noon of day 10
    engine.advance_to(_day(12))
    by_day = _merchant_rows(rows, "m")
    # Day 10's snapshot (00:00) was before the report: the transaction counts, the fraud not yet.
    assert by_day[_day(10)]["merchant_txn_count_28d_lag7d"] == 3
    assert by_day[_day(10)]["merchant_fraud_count_28d_lag7d"] == 0
    assert by_day[_day(11)]["merchant_fraud_count_28d_lag7d"] == 1
    assert by_day[_day(11)]["merchant_fraud_rate_28d_lag7d"] == pytest.approx(1 / 3)


def test_merchant_task_corrects_the_snapshot_a_late_event_belongs_in() -> None:
    """Across card partitions events arrive out of time order; the outcome must not depend on it."""
    rows: list[tuple[str, str, int, dict[str, Any]]] = []
    task = MerchantTask(0, lambda *row: rows.append(row))

    def envelope(source: int, clock: int, *events: list[Any]) -> bytes:
        return json.dumps({"source": source, "clock": clock, "events": list(events)}).encode()

    hour = 3600 * 10**6
    txns = [["t", f"t{i}", "m", _day(0) + (10 + i) * hour] for i in range(3)]
    task.on_envelope(envelope(0, _day(0) + 12 * hour, *txns))
    task.on_envelope(envelope(1, _day(11) + hour))  # another partition's clock passes day 11's midnight
    emitted = len(rows)
    before = _merchant_rows(rows, "m")
    assert before[_day(11)]["merchant_fraud_count_28d_lag7d"] == 0
    # Partition 0's label, reported at noon of day 10, arrives after day 11's snapshot was emitted.
    task.on_envelope(
        envelope(0, _day(10) + 12 * hour, ["l", "t0", "m", _day(0) + 10 * hour, True, _day(10) + 12 * hour])
    )
    assert len(rows) == emitted + 1, "exactly one correction"
    after = _merchant_rows(rows, "m")
    assert after[_day(11)]["merchant_fraud_count_28d_lag7d"] == 1  # re-emitted, corrected
    assert after[_day(10)] == before[_day(10)]  # day 10 stays as it was: the report came after it
    assert after[_day(10)]["merchant_fraud_count_28d_lag7d"] == 0
    # A label reported after the latest midnight (00:30 of day 11) is not late: nothing re-emitted.
    task.on_envelope(
        envelope(0, _day(11) + hour // 2, ["l", "t1", "m", _day(0) + 11 * hour, True, _day(11) + hour // 2])
    )
    assert len(rows) == emitted + 1
    # A transaction of day 10's evening, late by less than a day, re-emits day 11: its 24 h count
    # corrects, and the label now in the state but reported after day 11's midnight stays out.
    task.on_envelope(envelope(2, _day(10) + 23 * hour, ["t", "t9", "m", _day(10) + 23 * hour]))
    assert len(rows) == emitted + 2
    assert _merchant_rows(rows, "m")[_day(11)]["merchant_txn_count_24h"] == 1
    assert _merchant_rows(rows, "m")[_day(11)]["merchant_fraud_count_28d_lag7d"] == 1
    task.on_envelope(envelope(1, _day(12)))  # from day 12's snapshot on, both labels count
    assert _merchant_rows(rows, "m")[_day(12)]["merchant_fraud_count_28d_lag7d"] == 2

    # Everything in time order through the batch engine gives the same snapshots.
    engine_rows: list[tuple[str, str, int, dict[str, Any]]] = []
    engine = FeatureEngine(sink=lambda *row: engine_rows.append(row))
    for i in range(3):
        engine.add_transaction(
            Txn(f"t{i}", _day(0) + (10 + i) * hour, f"c{i}", "m", "US", "card_present", 20.0)
        )
    engine.add_label("t0", True, _day(10) + 12 * hour)
    engine.add_transaction(Txn("t9", _day(10) + 23 * hour, "c9", "m", "US", "card_present", 20.0))
    engine.add_label("t1", True, _day(11) + hour // 2)
    engine.advance_to(_day(12))
    assert _merchant_rows(rows, "m") == _merchant_rows(engine_rows, "m")


@pytest.mark.slow
def test_a_late_label_changes_merchant_snapshots_only_from_its_reported_at_on(settings: Settings) -> None:
    hour = timedelta(hours=1)
    reported = T0 + timedelta(days=10, hours=12)  # noon of day 10
    # One card, so its events reach the merchant task in time order (test_merchant_task_corrects_...
    # covers the other order); its transaction on day 11 moves the clock past day 11's midnight.
    card = "c_late"
    records = [
        (TRANSACTIONS_TOPIC, card, _txn(f"t_late_{i}", card, "m_late", T0 + (10 + i) * hour))
        for i in range(3)
    ]
    records.append((LABELS_TOPIC, "t_late_0", _label("t_late_0", card, reported)))
    day11 = T0 + timedelta(days=11, hours=2)
    records.append((TRANSACTIONS_TOPIC, card, _txn("t_other", card, "m_other", day11)))
    _send(settings, records)

    summary = _run_processor(settings)

    assert summary.balanced(), summary
    assert summary.tasks.labels_forwarded == 1
    rows = _effective(
        pd.concat(_stream_parts(settings, MERCHANT_VIEW).values(), ignore_index=True), MERCHANT_VIEW
    )
    rows = rows[rows["merchant_id"] == "m_late"].set_index(SNAPSHOT_TIME_COLUMN)
    day10, day11_start = pd.Timestamp(T0 + timedelta(days=10)), pd.Timestamp(T0 + timedelta(days=11))
    assert rows.loc[day10, "merchant_txn_count_28d_lag7d"] == 3  # in the window: only reported_at decides
    assert rows.loc[day10, "merchant_fraud_count_28d_lag7d"] == 0
    assert rows.loc[day11_start, "merchant_fraud_count_28d_lag7d"] == 1
    assert rows.loc[day11_start, "merchant_fraud_rate_28d_lag7d"] == pytest.approx(1 / 3)
    before = rows[rows.index < pd.Timestamp(reported)]
    assert (before["merchant_fraud_count_28d_lag7d"] == 0).all() and len(before) == 10
    online = read_online(open_store(settings), card, "m_late")["merchant"]
    assert online is not None and online["merchant_snapshot_at_us"] == to_us(T0 + timedelta(days=11))
    assert online["merchant_fraud_rate_28d_lag7d"] == pytest.approx(1 / 3)


# --- CLI --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_help_shows_an_example(tmp_path: Path) -> None:
    env = {**os.environ, "FRAUD_VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [*FRAUDCTL, "stream", "--help"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Example: fraudctl stream" in result.stdout
    assert "--idle-exit" in result.stdout and "--group" in result.stdout
