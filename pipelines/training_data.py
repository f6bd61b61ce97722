"""The labelled training frame, built point-in-time correct through Feast.

For each transaction at time t, Feast's `get_historical_features` returns the snapshots
its feature views held as of t - 1 µs (strictly before t); `model_vector`, the same
function the scoring service calls, turns them plus the transaction into the model's
vector. The label is what was known at the cutoff: a fraud label reported later is not.

A trap guarded here: Feast 0.67's `file` (dask) offline store silently drops an entity
row when any view has only later rows for it — the first transaction of every card,
exactly where card-testing fraud lives. This repo runs Feast's DuckDB engine, which
keeps them; still, each transaction carries its id through the join and the result is
left-joined back onto every transaction, so no engine can lose a row, and a missing
snapshot becomes "no history", exactly as an empty online store reads in serving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from feast import FeatureStore

from core.features import (
    AS_OF_OFFSET,
    CARD_FEATURES,
    DEVICE_FEATURES,
    MERCHANT_FEATURES,
    MODEL_FEATURES,
    Snapshot,
    model_vector,
)
from feature_repo.store import scoring_service
from pipelines.backfill import transactions_as_txns

ENTITY_TIMESTAMP = "event_timestamp"
NO_DEVICE = ""  # join key for transactions without a device: matches no feature row
KEEP_COLUMNS = ["transaction_id", "event_time", "card_id", "merchant_id", "channel", "amount", "scenario"]


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _snapshots(frame: pd.DataFrame, names: Sequence[str], at_key: str) -> list[Snapshot | None]:
    """Rows of a Feast result as snapshot dicts, None where the view had no row."""
    records = frame[list(names)].astype(object).to_dict("records")
    return [None if _is_missing(r[at_key]) else r for r in records]


def historical_snapshots(
    store: FeatureStore, transactions: pd.DataFrame, chunk_size: int = 100_000
) -> pd.DataFrame:
    """Feast point-in-time snapshots for every transaction, one row each, in input order.

    Chunked because the join pairs each entity row with every feature row of its entity
    before filtering by time: memory grows with chunk × history per card.
    """
    service = scoring_service(store)
    parts = []
    for start in range(0, len(transactions), chunk_size):
        chunk = transactions.iloc[start : start + chunk_size]
        entity_df = pd.DataFrame(
            {
                "transaction_id": chunk["transaction_id"].to_numpy(),
                "card_id": chunk["card_id"].to_numpy(),
                "merchant_id": chunk["merchant_id"].to_numpy(),
                "device_id": chunk["device_id"].fillna(NO_DEVICE).to_numpy(),
                ENTITY_TIMESTAMP: chunk["event_time"] - pd.Timedelta(microseconds=AS_OF_OFFSET),
            }
        )
        joined = store.get_historical_features(entity_df=entity_df, features=service).to_df()
        joined = joined.drop(
            columns=["card_id", "merchant_id", "device_id", ENTITY_TIMESTAMP], errors="ignore"
        )
        # Left-join back: rows Feast dropped come back with empty snapshots.
        parts.append(
            entity_df[["transaction_id"]].merge(joined, on="transaction_id", how="left", validate="1:1")
        )
    return pd.concat(parts, ignore_index=True)


def labels_as_of(labels: pd.DataFrame, cutoff: datetime | pd.Timestamp) -> set[str]:
    """Ids of transactions known to be fraud at the cutoff (the latest verdict wins)."""
    known = labels[labels["reported_at"] <= pd.Timestamp(cutoff)]
    latest = known.sort_values("reported_at").drop_duplicates("transaction_id", keep="last")
    return set(latest.loc[latest["is_fraud"], "transaction_id"])


def build_training_frame(
    store: FeatureStore,
    transactions: pd.DataFrame,
    labels: pd.DataFrame,
    label_cutoff: datetime | pd.Timestamp,
) -> pd.DataFrame:
    """Every transaction with its point-in-time model vector and the label known at the cutoff.

    Args:
        store: a Feast store the dataset was backfilled into.
        transactions: the transactions to build rows for (any subset of the backfilled ones).
        labels: all labels; only those reported at or before `label_cutoff` count.
        label_cutoff: when the training data is "taken"; later chargebacks are unknown.

    Returns:
        One row per transaction, in the input order: `KEEP_COLUMNS`, `MODEL_FEATURES`
        (in order) and `label` (0/1).
    """
    transactions = transactions.reset_index(drop=True)
    snaps = historical_snapshots(store, transactions)
    cards = _snapshots(snaps, CARD_FEATURES, "card_last_txn_at_us")
    merchants = _snapshots(snaps, MERCHANT_FEATURES, "merchant_snapshot_at_us")
    devices = _snapshots(snaps, DEVICE_FEATURES, "device_last_txn_at_us")
    txns = transactions_as_txns(transactions)
    vectors = [
        model_vector(txn, card, merchant, device if txn.device_id else None)
        for txn, card, merchant, device in zip(txns, cards, merchants, devices, strict=True)
    ]
    frame = transactions[KEEP_COLUMNS].copy()
    frame[MODEL_FEATURES] = pd.DataFrame(vectors, columns=MODEL_FEATURES, index=frame.index)
    fraud_ids = labels_as_of(labels, label_cutoff)
    frame["label"] = frame["transaction_id"].isin(fraud_ids).astype("int8")
    return frame
