"""Writes the stream's snapshot rows to Feast: online every micro-batch, offline every commit.

Online, only the latest row per entity matters, so a batch writes each entity once
(a busy device's twenty snapshots in one batch are one row). Offline, every row is kept
(training reads history point-in-time), buffered per input partition and written as one
parquet part per commit, named after the offset the part starts at. A part written just
before a crash, whose offsets were never committed, is deleted when its partition is
assigned again and rewritten by the replay — the offline store neither loses nor
doubles a row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from feast import FeatureStore

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


def _frame(view: str, rows: list[Row]) -> pd.DataFrame:
    key, names = VIEW_COLUMNS[view]
    frame = pd.DataFrame(
        [(entity, t, created, *(snap[n] for n in names)) for entity, t, created, snap in rows],
        columns=[key, SNAPSHOT_TIME_COLUMN, CREATED_COLUMN, *names],
    )
    for column in (SNAPSHOT_TIME_COLUMN, CREATED_COLUMN):
        frame[column] = pd.to_datetime(frame[column], unit="us", utc=True).astype("datetime64[us, UTC]")
    return frame


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
        written = {}
        for view, rows in self.online.items():
            if rows:
                self._provider.ingest_df(self._views[view], _frame(view, list(rows.values())))
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
