"""`fraudctl replay` against a real Tansu broker: every event once, in order, valid, paced.

All tests share one broker and so one `transactions` and one `labels` topic. Each test
that counts what arrived replays a dataset of its own seed (transaction ids are
`t_<seed>_...`) and counts only that seed's records.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from core.dataset import read_labels, read_transactions
from core.events import LABELS_TOPIC, TRANSACTIONS_TOPIC, Label, Transaction
from core.settings import Settings, get_settings
from pipelines import replay as rp
from pipelines import simulate
from pipelines.broker import EmbeddedBroker
from pipelines.kafka_clients import consumer

pytestmark = pytest.mark.slow

PARTITIONS = 3


def _simulate(tmp_path_factory: pytest.TempPathFactory, seed: int, days: int, cards: int) -> Path:
    out = tmp_path_factory.mktemp("data") / f"seed{seed}"
    simulate.run(out, simulate.SimulationParams(days, cards, merchants=20, seed=seed, fraud_rate=0.05))
    return out


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("replay") / "var", transactions_partitions=PARTITIONS)
    with EmbeddedBroker(settings, bootstrap="127.0.0.1:0") as running:
        yield running


# Chargebacks come 1-60 days late (median 10): 20 days put ~20 labels inside the period.
@pytest.fixture(scope="session")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _simulate(tmp_path_factory, seed=5, days=20, cards=40)


@pytest.fixture(scope="session")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _simulate(tmp_path_factory, seed=6, days=20, cards=40)


@pytest.fixture(scope="session")
def paced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _simulate(tmp_path_factory, seed=7, days=4, cards=100)


def _consume(settings: Settings, seed: int, transactions: int, labels: int) -> tuple[list, list]:
    """This seed's records on both topics, read until the counts are reached (then 1 s more)."""
    prefix, tx, lb = f"t_{seed}_", [], []
    reader = consumer(settings, f"test-replay-{uuid.uuid4().hex[:8]}", [TRANSACTIONS_TOPIC, LABELS_TOPIC])
    deadline, grace_end = time.monotonic() + 30, None
    try:
        while time.monotonic() < (grace_end or deadline):
            for records in reader.poll(timeout_ms=200).values():
                for r in records:
                    ours = r.key if r.topic == LABELS_TOPIC else json.loads(r.value)["transaction_id"]
                    if ours.startswith(prefix):
                        (lb if r.topic == LABELS_TOPIC else tx).append(r)
            if grace_end is None and len(tx) >= transactions and len(lb) >= labels:
                grace_end = time.monotonic() + 1  # a duplicate would show up now
    finally:
        reader.close()
    return tx, lb


def _rows(frame: pd.DataFrame, model: type[Transaction] | type[Label]) -> list[dict]:
    """The frame's rows as the model's fields, missing values as None."""
    frame = frame[list(model.model_fields)].astype(object)
    return frame.where(frame.notna(), None).to_dict("records")


def _expected(frame: pd.DataFrame, model: type[Transaction] | type[Label]) -> dict[str, object]:
    return {row["transaction_id"]: model.model_validate(row) for row in _rows(frame, model)}


def test_interleave_puts_each_label_after_the_transactions_before_it() -> None:
    events = np.array([10, 20, 20, 30])
    reported = np.array([5, 20, 25, 30, 99])
    codes = rp.interleave(events, reported).tolist()
    assert codes == [~0, 0, 1, 2, ~1, ~2, 3, ~3, ~4]  # at equal times the transaction first
    times = np.where(np.array(codes) >= 0, events[np.maximum(codes, 0)], reported[~np.minimum(codes, -1)])
    assert (np.diff(times) >= 0).all()


def test_schedule_counts_transactions_or_follows_event_time() -> None:
    events, reported = np.array([0, 1_000_000, 3_000_000]), np.array([2_000_000, 9_000_000])
    codes = rp.interleave(events, reported)  # 0, 1, ~0, 2, ~1
    assert rp.schedule(codes, events, reported, rps=0, speedup=None) is None
    assert rp.schedule(codes, events, reported, rps=2, speedup=None).tolist() == [0, 0.5, 0.5, 1, 1]
    # 10x: a second of event time is 0.1 s; the label after the end goes with the last transaction.
    assert rp.schedule(codes, events, reported, rps=0, speedup=10).tolist() == [0, 0.1, 0.2, 0.3, 0.3]


def test_encode_is_the_event_schema_and_round_trips(labelled: Path) -> None:
    transactions, labels = read_transactions(labelled), read_labels(labelled)
    odd = transactions.iloc[:3].copy()
    odd["merchant_id"] = ['quo"te', "back\\slash\nnewline", "café ☕"]
    odd["device_id"] = [None, np.nan, "d_1"]
    odd["amount"] = [100.0, 1e-7, 0.30000000000000004]
    for frame, schema, model in [
        (pd.concat([transactions, odd], ignore_index=True), rp.TRANSACTION_WIRE, Transaction),
        (labels, rp.LABEL_WIRE, Label),
    ]:
        values = rp.encode(rp.wire_table(frame, schema))
        assert len(values) == len(frame)
        for value, row in zip(values, _rows(frame, model), strict=True):
            assert list(json.loads(value)) == list(model.model_fields)  # every field, no `scenario`
            assert model.model_validate_json(value) == model.model_validate(row)
    sample = json.loads(rp.encode(rp.wire_table(transactions.iloc[:1], rp.TRANSACTION_WIRE))[0])
    assert sample["event_time"] == transactions["event_time"].iloc[0].strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_load_with_limit_keeps_labels_due_and_those_of_published_transactions(limited: Path) -> None:
    transactions, labels = read_transactions(limited), read_labels(limited)
    limit = len(transactions) // 2
    last = transactions["event_time"].iloc[limit - 1]
    published = set(transactions["transaction_id"].iloc[:limit])
    tx, lb = rp.load(limited, limit, labels_after_end=True)
    assert len(tx) == limit
    due, late = lb[lb["reported_at"] <= last], lb[lb["reported_at"] > last]
    assert len(due) == (labels["reported_at"] <= last).sum() > 0
    assert len(late) > 0 and set(late["transaction_id"]) <= published
    _, without = rp.load(limited, limit, labels_after_end=False)
    assert without.equals(due.reset_index(drop=True))
    assert len(rp.load(limited, None, labels_after_end=True)[1]) == len(labels)


def test_replay_delivers_every_event_once_keyed_ordered_and_valid(
    broker: EmbeddedBroker, labelled: Path
) -> None:
    transactions, labels = read_transactions(labelled), read_labels(labelled)
    assert (labels["reported_at"] <= transactions["event_time"].iloc[-1]).sum() > 0  # some due inside
    summary = rp.replay(labelled, broker.settings)
    assert (summary.transactions, summary.labels, summary.failed) == (len(transactions), len(labels), 0)
    assert summary.max_lag_seconds is None and summary.achieved_rps > 0

    tx, lb = _consume(broker.settings, 5, len(transactions), len(labels))
    assert len(tx) == len(transactions) and len(lb) == len(labels)
    received = {r.value: r for r in tx}
    assert len(received) == len(tx)  # no duplicates
    by_card: dict[str, list] = defaultdict(list)
    expected_tx = _expected(transactions, Transaction)
    for r in tx:
        event = Transaction.model_validate_json(r.value)
        assert r.key == event.card_id and event == expected_tx.pop(event.transaction_id)
        by_card[r.key].append((r.partition, r.offset, event.event_time))
    assert not expected_tx
    for arrivals in by_card.values():  # a card stays on one partition, in event-time order
        assert len({p for p, _, _ in arrivals}) == 1
        assert [t for _, _, t in sorted(arrivals)] == sorted(t for _, _, t in arrivals)
    expected_labels = _expected(labels, Label)
    for r in lb:
        label = Label.model_validate_json(r.value)
        assert r.key == label.transaction_id and label == expected_labels.pop(label.transaction_id)
    assert not expected_labels


def test_labels_are_published_when_due_between_transactions(labelled: Path) -> None:
    transactions, labels = rp.load(labelled, None, labels_after_end=True)
    times = transactions["event_time"]
    codes, _ = rp.plan(transactions, labels)  # what `replay` publishes, in its order
    clock, due_inside = None, 0  # clock: event time of the last transaction published
    for topic, _, value in rp.messages(transactions, labels, codes):
        if topic == TRANSACTIONS_TOPIC:
            clock = Transaction.model_validate_json(value).event_time
            continue
        reported = Label.model_validate_json(value).reported_at
        # Every transaction up to reported_at is out, and none after it.
        assert clock is not None and clock <= reported or reported > times.iloc[-1]
        assert clock == times[times <= reported].iloc[-1]
        due_inside += reported <= times.iloc[-1]
    assert due_inside > 0


def test_limit_publishes_the_first_n_and_their_labels(broker: EmbeddedBroker, limited: Path) -> None:
    limit = len(read_transactions(limited)) // 2
    expected_tx, expected_labels = rp.load(limited, limit, labels_after_end=True)
    summary = rp.replay(limited, broker.settings, limit=limit)
    assert (summary.transactions, summary.labels) == (limit, len(expected_labels))
    tx, lb = _consume(broker.settings, 6, limit, len(expected_labels))
    sent = {json.loads(r.value)["transaction_id"] for r in tx}
    assert len(tx) == limit and sent == set(expected_tx["transaction_id"])
    assert sorted(r.key for r in lb) == sorted(expected_labels["transaction_id"])


def test_rps_paces_the_transactions(broker: EmbeddedBroker, paced: Path) -> None:
    summary = rp.replay(paced, broker.settings, rps=400, limit=200)
    # The 200th transaction is due 199/400 s after the first.
    assert 0.45 <= summary.seconds < 2.0, summary
    assert summary.achieved_rps <= 410 and summary.max_lag_seconds is not None


def test_speedup_paces_by_event_time(broker: EmbeddedBroker, paced: Path) -> None:
    times = read_transactions(paced)["event_time"].iloc[:50]
    span = (times.iloc[-1] - times.iloc[0]).total_seconds()
    summary = rp.replay(paced, broker.settings, speedup=span / 0.5, limit=50, labels_after_end=False)
    assert 0.45 <= summary.seconds < 2.0, summary
    assert summary.target_rps is None and summary.max_lag_seconds is not None


@pytest.fixture
def run_cli(broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator:
    monkeypatch.setenv("FRAUD_PROFILE", "embedded")
    monkeypatch.setenv("FRAUD_KAFKA_BOOTSTRAP", broker.settings.kafka_bootstrap)
    monkeypatch.setenv("FRAUD_TRANSACTIONS_PARTITIONS", str(PARTITIONS))
    monkeypatch.setenv("FRAUD_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    app = typer.Typer()
    app.command()(rp.cli)
    yield lambda *args: CliRunner().invoke(app, [str(a) for a in args])
    get_settings.cache_clear()


def test_cli_replays_and_prints_a_summary(run_cli, paced: Path) -> None:
    result = run_cli("--from", paced, "--rps", 0, "--limit", 20)
    assert result.exit_code == 0, result.output
    assert "transactions" in result.stdout and "achieved rps" in result.stdout and "max lag" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rps", 100, "--speedup", 10], "error: use --rps or --speedup, not both"),
        (["--rps", -1], "error: --rps must be 0 (as fast as possible) or positive"),
        (["--limit", 0], "error: --limit must be at least 1"),
    ],
)
def test_cli_errors_are_one_line(run_cli, paced: Path, args: list, message: str) -> None:
    result = run_cli("--from", paced, *args)
    assert result.exit_code == 1 and result.stderr.startswith(message), result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_names_a_missing_dataset(run_cli, tmp_path: Path) -> None:
    result = run_cli("--from", tmp_path / "nothing")
    assert result.exit_code == 1 and "run `fraudctl simulate` or `fraudctl import` first" in result.stderr
