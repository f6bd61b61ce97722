"""The batched SQLite online store and the writer's protobuf rows equal Feast's stock path.

Reference: Feast's own `SqliteOnlineStore` fed by `provider.ingest_df(view, _frame(...))`,
what the stream processor did before. Candidate: `BatchedSqliteOnlineStore` fed by
`feast_rows` through `provider.online_write_batch`, what it does now. The same snapshots,
written in the same batches, must leave the same table rows (rowid included) and give
the same `get_online_features` answers.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from string import Template
from typing import Any

import pytest
import yaml
from feast import FeatureStore, RepoConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from core.dataset import read_labels, read_transactions
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW, FeatureEngine
from core.settings import Settings
from feature_repo.online_store import BatchedSqliteOnlineStore
from feature_repo.store import REPO_DIR, apply_definitions, scoring_service
from pipelines.backfill import transactions_as_txns
from pipelines.feature_writer import Row, _frame, feast_rows

VIEWS = (CARD_VIEW, MERCHANT_VIEW, DEVICE_VIEW)
BATCHES = 6


def _store(var_dir: Path, stock: bool) -> FeatureStore:
    settings = Settings(profile="embedded", var_dir=var_dir, feast_project="online_store_test")
    values = {"feast_project": settings.feast_project, "feast_dir": str(settings.feast_dir), "redis_url": ""}
    config = yaml.safe_load(Template((REPO_DIR / "feature_store.yaml").read_text()).substitute(values))
    if stock:
        config["online_store"]["type"] = "sqlite"
    repo_config = RepoConfig(**config)
    repo_config.repo_path = REPO_DIR
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    store = FeatureStore(config=repo_config)
    apply_definitions(store, settings)
    return store


def _snapshot_batches(data: Path) -> list[dict[str, list[Row]]]:
    """The feature logic's snapshots over the dataset, the latest per entity per batch."""
    batches: list[dict[str, dict[str, Row]]] = []
    created = iter(range(1_700_000_000_000_000, 1_800_000_000_000_000))

    def sink(view: str, entity_id: str, time_us: int, snapshot: dict[str, Any]) -> None:
        batches[-1][view][entity_id] = (entity_id, time_us, next(created), snapshot)

    engine = FeatureEngine(sink=sink)
    txns = transactions_as_txns(read_transactions(data))
    labels = read_labels(data)
    label_times = labels["reported_at"].astype("datetime64[us, UTC]").astype("int64").tolist()
    pending = list(zip(labels["transaction_id"], labels["is_fraud"], label_times, strict=True))
    per_batch = math.ceil(len(txns) / BATCHES)
    for i, txn in enumerate(txns):
        if i % per_batch == 0:
            batches.append({view: {} for view in VIEWS})
        while pending and pending[0][2] < txn.time_us:
            tid, is_fraud, reported = pending.pop(0)
            engine.add_label(tid, bool(is_fraud), reported)
        engine.add_transaction(txn)
    return [{view: list(rows.values()) for view, rows in batch.items()} for batch in batches]


def _table_rows(store: FeatureStore, view: str) -> list[tuple[Any, ...]]:
    path = store.config.online_store.path
    with sqlite3.connect(path) as conn:
        table = f"{store.project}_{view}"
        return conn.execute(f'SELECT rowid, * FROM "{table}" ORDER BY rowid').fetchall()


def _serialized(rows: list[Any]) -> list[tuple[bytes, dict[str, bytes], Any, Any]]:
    return [
        (key.SerializeToString(), {n: v.SerializeToString() for n, v in values.items()}, ts, created)
        for key, values, ts, created in rows
    ]


@pytest.fixture(scope="module")
def batches(small_dataset: Path) -> list[dict[str, list[Row]]]:
    return _snapshot_batches(small_dataset)


def test_feast_rows_equal_ingest_df_conversion(batches: list[dict[str, list[Row]]], tmp_path: Path) -> None:
    store = _store(tmp_path / "var", stock=True)
    provider = store._get_provider()
    edge: dict[str, Any] = {
        "card_home_country": None,
        "card_known_devices": [],
        "card_known_devices_last_seen_us": [],
        "card_known_countries": None,
        "card_known_countries_last_seen_us": None,
        "card_amount_std_30d": math.nan,
        "card_amount_max_10m": 3,  # an int in a Float64 column
    }
    for view in VIEWS:
        feature_view = store.get_feature_view(view)
        rows = [row for batch in batches for row in batch[view]][:400]
        assert rows
        if view == CARD_VIEW:
            entity, t, created, snapshot = rows[0]
            rows.append((entity + "-edge", t, created + 1, {**snapshot, **edge}))
            rows.append((entity + "-none", t, created + 2, {**snapshot, "card_txn_count_30d": None}))
        expected = provider._prep_rows_to_write_for_ingestion(feature_view, _frame(view, rows))
        actual = feast_rows(feature_view, rows)
        assert actual is not None
        assert _serialized(actual) == _serialized(expected), view


def test_batched_store_equals_stock_store(batches: list[dict[str, list[Row]]], tmp_path: Path) -> None:
    stock = _store(tmp_path / "stock", stock=True)
    batched = _store(tmp_path / "batched", stock=False)
    assert isinstance(batched._get_provider().online_store, BatchedSqliteOnlineStore)
    assert not isinstance(stock._get_provider().online_store, BatchedSqliteOnlineStore)

    views = {view: stock.get_feature_view(view) for view in VIEWS}
    for batch in batches:
        for view, rows in batch.items():
            if rows:
                stock._get_provider().ingest_df(views[view], _frame(view, rows))
                protos = feast_rows(views[view], rows)
                assert protos is not None
                batched._get_provider().online_write_batch(batched.config, views[view], protos, None)

    for view in VIEWS:
        expected = _table_rows(stock, view)
        assert len(expected) > 10
        assert _table_rows(batched, view) == expected, view

    latest = {view: {row[0] for batch in batches for row in batch[view]} for view in VIEWS}
    cards, merchants, devices = (sorted(latest[v]) for v in VIEWS)
    entity_rows = [
        {
            "card_id": card,
            "merchant_id": merchants[i % len(merchants)],
            "device_id": devices[i % len(devices)],
        }
        for i, card in enumerate(cards)
    ] + [{"card_id": "no-such-card", "merchant_id": "", "device_id": ""}]
    answers = [
        store.get_online_features(features=scoring_service(store), entity_rows=entity_rows).to_dict()
        for store in (stock, batched)
    ]
    assert answers[0] == answers[1]
    assert answers[0]["card_last_txn_at_us"][-1] is None
    # The batched store's own online_read: same timestamps, same values, entity by entity.
    join_keys = dict(zip(VIEWS, ("card_id", "merchant_id", "device_id"), strict=True))
    for view in VIEWS:
        keys = [
            EntityKey(join_keys=[join_keys[view]], entity_values=[Value(string_val=entity)])
            for entity in [*sorted(latest[view]), "no-such-entity"]
        ]
        reads = [
            store._get_provider().online_read(store.config, views[view], keys) for store in (stock, batched)
        ]
        assert reads[0] == reads[1], view
        assert reads[0][-1] == (None, None) and reads[0][0][0] is not None


def test_batched_store_is_in_wal_mode_and_writes_past_an_open_reader(
    batches: list[dict[str, list[Row]]], tmp_path: Path
) -> None:
    store = _store(tmp_path / "var", stock=False)
    view = store.get_feature_view(DEVICE_VIEW)
    first, second = batches[0][DEVICE_VIEW], batches[1][DEVICE_VIEW]
    provider = store._get_provider()
    provider.online_write_batch(store.config, view, feast_rows(view, first), None)
    path = store.config.online_store.path
    table = f'"{store.project}_{DEVICE_VIEW}"'

    reader = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    try:
        assert reader.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        reader.execute("BEGIN")
        before = reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        # A rollback-journal database would refuse the write (SQLITE_BUSY) until the read ends.
        provider.online_write_batch(store.config, view, feast_rows(view, second), None)
        assert reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == before  # its snapshot
        reader.execute("COMMIT")
        new_devices = {row[0] for row in second} - {row[0] for row in first}
        assert new_devices
        after = reader.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert after == before + len(new_devices) * len(view.features)
    finally:
        reader.close()
