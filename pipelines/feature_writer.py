"""Writes the stream's snapshot rows to Feast: online every micro-batch, offline every commit.

Online, only the latest row per entity matters, so a batch writes each entity once
(a busy device's twenty snapshots in one batch are one row). Offline, every row is kept
(training reads history point-in-time), buffered per input partition and written as one
parquet part per commit, named after the offset the part starts at. A part written just
before a crash, whose offsets were never committed, is deleted when its partition is
assigned again and rewritten by the replay — the offline store neither loses nor
doubles a row.

Online rows go to Feast's provider as the (entity key, values, event time, created time)
protobuf rows its `ingest_df` would build from `_frame`, built here straight from the
snapshots: Feast's DataFrame → arrow → numpy → protobuf path cost more than the SQLite
write itself. `feast_rows` covers the value types our views use (any other view goes
through `ingest_df`); `tests/integration/test_online_store.py` checks that its rows
serialize byte for byte like `ingest_df`'s.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW, SNAPSHOT_TIME_COLUMN, Sink
from core.features import CARD_FEATURES, DEVICE_FEATURES, MERCHANT_FEATURES, Snapshot
from core.settings import Settings
from feature_repo.data_sources import CREATED_COLUMN, offline_dir_of

VIEW_COLUMNS = {
    CARD_VIEW: ("card_id", CARD_FEATURES),
    MERCHANT_VIEW: ("merchant_id", MERCHANT_FEATURES),
    DEVICE_VIEW: ("device_id", DEVICE_FEATURES),
}

Row = tuple[str, int, int, Snapshot]  # entity id, snapshot time µs, created µs, values
FeastRow = tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]
ToProto = Callable[[Any], ValueProto]

# Feast hands the online store naive UTC datetimes (its arrow → pandas conversion drops the zone).
_EPOCH = datetime(1970, 1, 1)
_NULL = ValueProto()


# Feast's arrow conversion turns NaN into null, like None (`v != v` only for NaN).
def _double(value: Any) -> ValueProto:
    return _NULL if value is None or value != value else ValueProto(double_val=value)


def _int64(value: Any) -> ValueProto:
    return _NULL if value is None or value != value else ValueProto(int64_val=int(value))


def _string(value: Any) -> ValueProto:
    return _NULL if value is None or value != value else ValueProto(string_val=str(value))


# A None inside a list becomes Feast's default for the item type; an empty list stays set.
def _string_list(value: Any) -> ValueProto:
    if value is None:
        return _NULL
    # A dict, not StringList(...): protobuf builds the submessage in place, ~2x faster.
    return ValueProto(string_list_val={"val": ["" if v is None else v for v in value]})  # type: ignore[arg-type]


def _int64_list(value: Any) -> ValueProto:
    if value is None:
        return _NULL
    return ValueProto(int64_list_val={"val": [0 if v is None else v for v in value]})  # type: ignore[arg-type]


# What Feast's `python_values_to_proto_values` makes of the values our snapshots hold.
_TO_PROTO: dict[ValueType, ToProto] = {
    ValueType.DOUBLE: _double,
    ValueType.INT64: _int64,
    ValueType.STRING: _string,
    ValueType.STRING_LIST: _string_list,
    ValueType.INT64_LIST: _int64_list,
}


def _frame(view: str, rows: list[Row]) -> pd.DataFrame:
    key, names = VIEW_COLUMNS[view]
    frame = pd.DataFrame(
        [(entity, t, created, *(snap[n] for n in names)) for entity, t, created, snap in rows],
        columns=[key, SNAPSHOT_TIME_COLUMN, CREATED_COLUMN, *names],
    )
    for column in (SNAPSHOT_TIME_COLUMN, CREATED_COLUMN):
        frame[column] = pd.to_datetime(frame[column], unit="us", utc=True).astype("datetime64[us, UTC]")
    return frame


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep the cyclic GC out of a write's ~17 short-lived protobuf objects per entity row.

    They live for the whole write, so collections during it promote them to the oldest
    generation, and those promotions trigger full collections over all of the processor's
    state. They hold no cycles: reference counting frees them when the write returns.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _converters(view: FeatureView) -> list[tuple[str, ToProto]] | None:
    """(feature name, converter) in the view's order; None if a type has no converter here."""
    pairs = [(f.name, _TO_PROTO.get(f.dtype.to_value_type())) for f in view.features]
    if any(convert is None for _, convert in pairs):
        return None
    return [(name, convert) for name, convert in pairs if convert is not None]


def feast_rows(view: FeatureView, rows: list[Row]) -> list[FeastRow] | None:
    """The rows `ingest_df(view, _frame(view, rows))` writes online; None if not covered here."""
    converters = _converters(view)
    if converters is None or len(view.entity_columns) != 1:
        return None
    (entity,) = view.entity_columns
    key_to_proto = _TO_PROTO.get(entity.dtype.to_value_type())
    if key_to_proto is None:
        return None
    join_keys = [entity.name]
    out: list[FeastRow] = []
    for entity_id, time_us, created_us, snapshot in rows:
        key = EntityKeyProto(join_keys=join_keys, entity_values=[key_to_proto(entity_id)])
        values = {name: convert(snapshot[name]) for name, convert in converters}
        out.append(
            (
                key,
                values,
                _EPOCH + timedelta(microseconds=time_us),
                _EPOCH + timedelta(microseconds=created_us),
            )
        )
    return out


def part_name(topic: str, partition: int, start_offset: int) -> str:
    return f"{topic}-{partition}-{start_offset:012d}.parquet"


@dataclass
class FeatureWriter:
    store: FeatureStore
    settings: Settings
    online: dict[str, dict[str, Row]] = field(default_factory=lambda: {v: {} for v in VIEW_COLUMNS})
    # (view, topic, partition) -> rows since the last commit
    offline: dict[tuple[str, str, int], list[Row]] = field(default_factory=dict)
    _last_created: int = 0

    def __post_init__(self) -> None:
        # Looked up once: Feast rebuilds a view from the registry's protobuf on every lookup.
        self._views = {view: self.store.get_feature_view(view) for view in VIEW_COLUMNS}
        self._provider = self.store._get_provider()

    def _created_us(self) -> int:
        # Strictly increasing, so a correction always outranks the row it corrects.
        self._last_created = max(time.time_ns() // 1000, self._last_created + 1)
        return self._last_created

    def sink_for(self, topic: str, partition: int) -> Sink:
        """The sink a task of (topic, partition) emits its snapshots into."""

        def sink(view: str, entity_id: str, time_us: int, snapshot: Snapshot) -> None:
            row = (entity_id, time_us, self._created_us(), snapshot)
            latest = self.online[view]
            current = latest.get(entity_id)
            if current is None or current[1] <= time_us:
                latest[entity_id] = row
            self.offline.setdefault((view, topic, partition), []).append(row)

        return sink

    def write_online(self) -> dict[str, int]:
        """Write the batch's latest row per entity; returns rows written per view."""
        with _collector_paused():
            return self._write_online()

    def _write_online(self) -> dict[str, int]:
        written = {}
        for view, rows in self.online.items():
            if rows:
                feature_view, latest = self._views[view], list(rows.values())
                protos = feast_rows(feature_view, latest)
                if protos is None:
                    self._provider.ingest_df(feature_view, _frame(view, latest))
                else:
                    self._provider.online_write_batch(self.store.config, feature_view, protos, progress=None)
                written[view] = len(rows)
                rows.clear()
        return written

    def write_offline(self, start_offsets: dict[tuple[str, int], int]) -> dict[str, int]:
        """Write one parquet part per (view, input partition); returns rows written per view."""
        written: dict[str, int] = {}
        for (view, topic, partition), rows in self.offline.items():
            if not rows:
                continue
            folder = offline_dir_of(self.settings.offline_dir, view)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / part_name(topic, partition, start_offsets[(topic, partition)])
            tmp = target.with_suffix(".tmp")
            _frame(view, rows).to_parquet(tmp, index=False)
            tmp.replace(target)  # a reader never sees half a part
            written[view] = written.get(view, 0) + len(rows)
        self.offline.clear()
        return written

    def drop_uncommitted_parts(self, topic: str, partition: int, committed: int) -> list[Path]:
        """Delete parts of (topic, partition) that start at or after the committed offset."""
        removed = []
        for view in VIEW_COLUMNS:
            for part in offline_dir_of(self.settings.offline_dir, view).glob(
                f"{topic}-{partition}-*.parquet"
            ):
                if int(part.stem.rsplit("-", 1)[1]) >= committed:
                    part.unlink()
                    removed.append(part)
        return removed

    def forget(self, topic: str, partition: int) -> None:
        """Drop the buffered offline rows of a partition this processor no longer owns."""
        for key in [k for k in self.offline if k[1:] == (topic, partition)]:
            del self.offline[key]
