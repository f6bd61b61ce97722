"""What the monitor knows: the predictions and labels it consumed, and where it stopped.

Restart safety without double counting: the offsets the monitor has consumed up to are saved
*with* the state they produced, in one checkpoint, and a restarted monitor seeks to them. A
Kafka offset commit and a state write cannot be one atomic step, so the offsets committed
to Kafka (kept for lag dashboards) are not what a restart trusts; the checkpoint is (the
"offsets stored outside Kafka" pattern of the Kafka consumer docs).

A checkpoint is a folder of parquet parts plus ``checkpoint.json``, replaced atomically:
each save writes only the rows consumed since the last one as new parts, then the JSON that
lists every live part with the offsets and the evaluator's state. A crash between the two
leaves parts no JSON names; the next load deletes them. Every `COMPACT_PARTS` saves the
parts are rewritten as one, dropping rows past the retention.

Records are deduplicated by `transaction_id` (predictions: the prediction writer may resend
a batch after a crash, DESIGN.md §2) and by the whole label (labels).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.events import Label, Prediction
from core.features import MODEL_FEATURES

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
COMPACT_PARTS = 20

_TS = pa.timestamp("us", tz="UTC")
PREDICTION_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("merchant_id", pa.string()),
        ("device_id", pa.string()),
        ("event_time", _TS),
        ("scored_at", _TS),
        ("score", pa.float64()),
        ("decision", pa.string()),
        ("served_by", pa.string()),
        ("model_version", pa.string()),
        ("challenger_version", pa.string()),
        ("challenger_score", pa.float64()),
        ("champion_version", pa.string()),
        ("champion_score", pa.float64()),
        ("latency_ms", pa.float64()),
        ("rule_hits", pa.string()),
        ("amount", pa.float64()),
        ("channel", pa.string()),
        ("merchant_country", pa.string()),
        ("ip_country", pa.string()),
        *((name, pa.float32()) for name in MODEL_FEATURES),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("card_id", pa.string()),
        ("is_fraud", pa.bool_()),
        ("reported_at", _TS),
        ("source", pa.string()),
    ]
)


def _prediction_row(p: Prediction) -> dict[str, Any]:
    row: dict[str, Any] = {
        "transaction_id": p.transaction_id,
        "card_id": p.card_id,
        "merchant_id": p.merchant_id,
        "device_id": p.device_id,
        "event_time": p.event_time,
        "scored_at": p.scored_at,
        "score": p.score,
        "decision": p.decision,
        "served_by": p.served_by,
        "model_version": p.model_version,
        "challenger_version": p.challenger_version,
        "challenger_score": p.challenger_score,
        "champion_version": p.champion_version,
        "champion_score": p.champion_score,
        "latency_ms": p.latency_ms.get("total", np.nan),
        "rule_hits": ",".join(p.rule_hits),
    }
    features = p.features
    missing = [name for name in MODEL_FEATURES if name not in features]
    if missing:
        raise ValueError(f"prediction {p.transaction_id} lacks feature(s) {', '.join(missing[:3])}")
    row.update((name, features[name]) for name in MODEL_FEATURES)
    # Records written before the request's fields were logged: the amount from its feature.
    row["amount"] = p.amount if p.amount is not None else float(np.expm1(features["amount_log"]))
    row["channel"], row["merchant_country"], row["ip_country"] = p.channel, p.merchant_country, p.ip_country
    return row


def _label_row(label: Label) -> dict[str, Any]:
    return {
        "transaction_id": label.transaction_id,
        "card_id": label.card_id,
        "is_fraud": label.is_fraud,
        "reported_at": label.reported_at,
        "source": label.source,
    }


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass
class MonitorState:
    """Predictions and labels consumed so far (bounded by `retention_days` of event time)."""

    folder: Path
    retention_days: float = 45.0
    offsets: dict[str, int] = field(default_factory=dict)  # "topic:partition" -> next offset
    evaluator: dict[str, Any] = field(default_factory=dict)  # the loop's own state (JSON-able)
    _tables: dict[str, list[pa.Table]] = field(default_factory=lambda: {"predictions": [], "labels": []})
    _new: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"predictions": [], "labels": []})
    _seen_predictions: set[str] = field(default_factory=set)
    _seen_labels: set[tuple[Any, ...]] = field(default_factory=set)
    _frames: dict[str, pd.DataFrame | None] = field(
        default_factory=lambda: {"predictions": None, "labels": None}
    )
    _parts: dict[str, list[str]] = field(default_factory=lambda: {"predictions": [], "labels": []})
    _unsaved: dict[str, list[pa.Table]] = field(default_factory=lambda: {"predictions": [], "labels": []})
    _seq: int = 0

    # --- consuming ------------------------------------------------------------------------
    def add_prediction(self, prediction: Prediction) -> bool:
        """Keep one prediction; False when its transaction was seen already (a resend)."""
        if prediction.transaction_id in self._seen_predictions:
            return False
        row = _prediction_row(prediction)
        self._seen_predictions.add(prediction.transaction_id)
        self._new["predictions"].append(row)
        self._frames["predictions"] = None
        return True

    def add_label(self, label: Label) -> bool:
        key = (label.transaction_id, label.reported_at, label.is_fraud, label.source)
        if key in self._seen_labels:
            return False
        self._seen_labels.add(key)
        self._new["labels"].append(_label_row(label))
        self._frames["labels"] = None
        return True

    # --- reading --------------------------------------------------------------------------
    def _flush_new(self, kind: str) -> None:
        """Rows consumed since the last read into a table: kept, and remembered as unsaved."""
        if self._new[kind]:
            table = _table(self._new[kind], PREDICTION_SCHEMA if kind == "predictions" else LABEL_SCHEMA)
            self._tables[kind].append(table)
            self._unsaved[kind].append(table)
            self._new[kind] = []

    def _frame(self, kind: str) -> pd.DataFrame:
        cached = self._frames[kind]
        if cached is not None:
            return cached
        schema = PREDICTION_SCHEMA if kind == "predictions" else LABEL_SCHEMA
        self._flush_new(kind)
        tables = self._tables[kind] or [schema.empty_table()]
        table = pa.concat_tables(tables)
        self._tables[kind] = [table]  # consolidated once; later reads reuse it
        frame = table.to_pandas(types_mapper=None)
        self._frames[kind] = frame
        return frame

    @property
    def predictions(self) -> pd.DataFrame:
        return self._frame("predictions")

    @property
    def labels(self) -> pd.DataFrame:
        return self._frame("labels")

    def counts(self) -> dict[str, int]:
        return {"predictions": len(self._seen_predictions), "labels": len(self._seen_labels)}

    # --- the checkpoint ---------------------------------------------------------------------
    def save(self) -> None:
        """Write the rows consumed since the last save, then the checkpoint that lists them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        if self._seq % COMPACT_PARTS == 0:
            self._compact()
        for kind in ("predictions", "labels"):
            self._flush_new(kind)
            if not self._unsaved[kind]:
                continue
            name = f"{kind}-{self._seq:06d}.parquet"
            pq.write_table(pa.concat_tables(self._unsaved[kind]), self.folder / name)
            self._unsaved[kind] = []
            self._parts[kind].append(name)
        self._write_checkpoint()

    def _compact(self) -> None:
        """One part per kind, without the rows older than the retention."""
        frames = {kind: self._frame(kind) for kind in ("predictions", "labels")}
        kept = dict(frames)
        if not frames["predictions"].empty:  # labels may come first: no event time yet, drop nothing
            latest = pd.Timestamp(frames["predictions"]["event_time"].max())
            horizon = latest - pd.Timedelta(days=self.retention_days)
            kept = {
                "predictions": frames["predictions"][frames["predictions"]["event_time"] >= horizon],
                "labels": frames["labels"][frames["labels"]["reported_at"] >= horizon],
            }
        old = [name for names in self._parts.values() for name in names]
        for kind, schema in (("predictions", PREDICTION_SCHEMA), ("labels", LABEL_SCHEMA)):
            table = pa.Table.from_pandas(kept[kind], schema=schema, preserve_index=False)
            name = f"{kind}-{self._seq:06d}-compact.parquet"
            pq.write_table(table, self.folder / name)
            self._tables[kind], self._parts[kind], self._unsaved[kind] = [table], [name], []
            self._frames[kind] = None
        self._write_checkpoint()
        for name in old:
            (self.folder / name).unlink(missing_ok=True)
        self._seen_predictions = set(kept["predictions"]["transaction_id"])
        self._seen_labels = set(_label_keys(kept["labels"]))

    def _write_checkpoint(self) -> None:
        content = {
            "seq": self._seq,
            "parts": self._parts,
            "offsets": self.offsets,
            "evaluator": self.evaluator,
        }
        tmp = self.folder / f"{CHECKPOINT_FILE}.tmp"
        tmp.write_text(json.dumps(content, default=str))
        os.replace(tmp, self.folder / CHECKPOINT_FILE)  # atomic: the old or the new, never half

    @classmethod
    def load(cls, folder: Path, retention_days: float = 45.0) -> MonitorState:
        """The state of the last checkpoint in `folder` (an empty one if there is none)."""
        state = cls(folder, retention_days)
        path = folder / CHECKPOINT_FILE
        if not path.exists():
            return state
        content = json.loads(path.read_text())
        state._seq, state._parts = int(content["seq"]), content["parts"]
        state.offsets = {k: int(v) for k, v in content["offsets"].items()}
        state.evaluator = content["evaluator"]
        listed = {name for names in state._parts.values() for name in names}
        for orphan in sorted({p.name for p in folder.glob("*.parquet")} - listed):
            log.info("removing %s: written after the last checkpoint", orphan)
            (folder / orphan).unlink()
        for kind in ("predictions", "labels"):
            state._tables[kind] = [pq.read_table(folder / name) for name in state._parts[kind]]
        state._seen_predictions = set(state.predictions["transaction_id"])
        state._seen_labels = set(_label_keys(state.labels))
        return state


def _label_keys(labels: pd.DataFrame) -> Iterable[tuple[Any, ...]]:
    reported = [t.to_pydatetime() for t in pd.to_datetime(labels["reported_at"], utc=True)]
    return zip(
        labels["transaction_id"], reported, labels["is_fraud"].astype(bool), labels["source"], strict=True
    )
