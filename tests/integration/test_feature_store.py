"""Feast for real: apply, backfill, materialize, online reads and the point-in-time training frame.

Runs on the embedded profile (SQLite online store) and on the compose profile against
this machine's Redis. Both use Feast's DuckDB offline store over the parquet files.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.dataset import read_labels, read_transactions
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW
from core.features import CARD_FEATURES, DEVICE_FEATURES, MERCHANT_FEATURES, MODEL_FEATURES
from core.settings import Settings
from feature_repo.data_sources import offline_dir_of
from feature_repo.feature_services import FRAUD_SCORING_SERVICE
from feature_repo.store import OnlineReader, open_store, read_online
from pipelines.backfill import backfill, compute_snapshots
from pipelines.training_data import build_training_frame

pytestmark = pytest.mark.slow


def _same(a: object, b: object) -> bool:
    if isinstance(a, list | tuple | np.ndarray) or isinstance(b, list | tuple | np.ndarray):
        return list(a) == list(b)  # type: ignore[arg-type]
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)  # type: ignore[arg-type]
    return a == b


def _check_online_equals_latest_snapshots(settings: Settings, data: Path) -> None:
    frames, _ = compute_snapshots(read_transactions(data), read_labels(data))
    store = open_store(settings)
    latest = {
        "card": frames[CARD_VIEW].drop_duplicates("card_id", keep="last").set_index("card_id"),
        "merchant": frames[MERCHANT_VIEW]
        .drop_duplicates("merchant_id", keep="last")
        .set_index("merchant_id"),
        "device": frames[DEVICE_VIEW].drop_duplicates("device_id", keep="last").set_index("device_id"),
    }
    names = {"card": CARD_FEATURES, "merchant": MERCHANT_FEATURES, "device": DEVICE_FEATURES}
    # Merchants with a non-zero fraud rate first, so the label-driven values are compared too.
    merchants = latest["merchant"].sort_values("merchant_fraud_count_28d_lag7d", ascending=False).index
    reader = OnlineReader(store)  # the scoring service's read: same answers, less planning
    for i, card_id in enumerate(latest["card"].index[:25]):
        merchant_id = merchants[i % len(merchants)]
        device_id = latest["device"].index[i % len(latest["device"])]
        online = read_online(store, card_id, merchant_id, device_id)
        assert reader.read(card_id, merchant_id, device_id) == online
        for entity, entity_id in (("card", card_id), ("merchant", merchant_id), ("device", device_id)):
            for name in names[entity]:
                expected = latest[entity].loc[entity_id, name]
                assert _same(online[entity][name], expected), (entity, entity_id, name)
    assert read_online(store, "no-such-card")["card"] is None
    assert reader.read("no-such-card", "no-such-merchant", "no-such-device") == {
        "card": None,
        "merchant": None,
        "device": None,
    }


def test_embedded_backfill_materializes_latest_snapshots(
    small_dataset: Path, embedded_settings: Settings
) -> None:
    result = backfill(small_dataset, embedded_settings)
    assert result.snapshot_rows[CARD_VIEW] == result.transactions
    store = open_store(embedded_settings)
    assert store.get_feature_service(FRAUD_SCORING_SERVICE).name == FRAUD_SCORING_SERVICE
    assert (embedded_settings.feast_dir / "online.db").exists()
    _check_online_equals_latest_snapshots(embedded_settings, small_dataset)


@pytest.mark.redis
def test_redis_backfill_materializes_latest_snapshots(small_dataset: Path, redis_settings: Settings) -> None:
    backfill(small_dataset, redis_settings)
    _check_online_equals_latest_snapshots(redis_settings, small_dataset)
    open_store(redis_settings).teardown()  # leave the shared Redis clean


def _store_fingerprint(settings: Settings, card_ids: list[str]) -> str:
    digest = hashlib.sha256()
    for view in (CARD_VIEW, MERCHANT_VIEW, DEVICE_VIEW):
        digest.update(pd.read_parquet(offline_dir_of(settings.offline_dir, view)).to_csv().encode())
    store = open_store(settings)
    for card_id in card_ids:
        digest.update(repr(read_online(store, card_id)).encode())
    return digest.hexdigest()


def test_backfill_twice_gives_the_same_store(small_dataset: Path, embedded_settings: Settings) -> None:
    cards = read_transactions(small_dataset)["card_id"].unique()[:20].tolist()
    backfill(small_dataset, embedded_settings)
    first = _store_fingerprint(embedded_settings, cards)
    backfill(small_dataset, embedded_settings)
    assert _store_fingerprint(embedded_settings, cards) == first


def test_training_frame_equals_direct_feature_logic(small_dataset: Path, embedded_settings: Settings) -> None:
    result = backfill(small_dataset, embedded_settings, with_vectors=True)
    transactions, labels = read_transactions(small_dataset), read_labels(small_dataset)
    cutoff = transactions["event_time"].max()
    frame = build_training_frame(open_store(embedded_settings), transactions, labels, cutoff)

    # Every transaction is there, once, in order — including each card's first one,
    # which Feast's file offline store would have dropped.
    assert frame["transaction_id"].tolist() == transactions["transaction_id"].tolist()
    first_of_card = ~transactions.duplicated("card_id")
    assert first_of_card.sum() > 100
    assert (frame.loc[first_of_card, "card_has_history"] == 0).all()
    assert (frame.loc[~first_of_card, "card_has_history"] == 1).any()

    assert result.vectors is not None
    direct = result.vectors.set_index("transaction_id").loc[frame["transaction_id"], MODEL_FEATURES]
    np.testing.assert_allclose(frame[MODEL_FEATURES].to_numpy(), direct.to_numpy(), rtol=1e-12, atol=1e-12)


def test_training_labels_are_those_known_at_the_cutoff(
    small_dataset: Path, embedded_settings: Settings
) -> None:
    backfill(small_dataset, embedded_settings)
    transactions, labels = read_transactions(small_dataset), read_labels(small_dataset)
    cutoff = transactions["event_time"].min() + pd.Timedelta(days=10)
    frame = build_training_frame(open_store(embedded_settings), transactions, labels, cutoff)
    known = set(labels.loc[labels["reported_at"] <= cutoff, "transaction_id"])
    later = set(labels.loc[labels["reported_at"] > cutoff, "transaction_id"]) - known
    assert known and later
    positives = set(frame.loc[frame["label"] == 1, "transaction_id"])
    assert positives == known
    assert not positives & later
