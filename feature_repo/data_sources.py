"""Data sources: for each feature view, a parquet batch source and a push source on top.

The batch source is a folder of parquet files per view: `fraudctl backfill` writes one,
the stream processor adds parts as it commits, and training reads them all
point-in-time. The push source names the view's stream input (Feast's model of a
streaming source); the stream processor writes through Feast's provider directly so it
can batch rows and keep the feature-view lookups out of the hot loop. Paths depend on
the settings (`var/` differs per checkout and per test), so sources are built by a
function rather than at import time.
"""

from pathlib import Path

from feast import FileSource, PushSource

from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW, SNAPSHOT_TIME_COLUMN

# Each row's write time: the stream processor can correct a snapshot it already wrote (a
# late event), and Feast keeps the row written last among those with the same timestamp.
CREATED_COLUMN = "created_timestamp"


def offline_dir_of(offline_dir: Path, view: str) -> Path:
    """The folder of one feature view's parquet files: the backfill's plus the stream's parts."""
    return offline_dir / view


def offline_glob(offline_dir: Path, view: str) -> str:
    return str(offline_dir_of(offline_dir, view) / "*.parquet")


def build_sources(offline_dir: Path) -> dict[str, PushSource]:
    """One push source (wrapping its batch source) per feature view, keyed by view name."""
    descriptions = {
        CARD_VIEW: "Card snapshots after each of the card's transactions.",
        MERCHANT_VIEW: "Merchant snapshots at 00:00 UTC of each day.",
        DEVICE_VIEW: "Device snapshots after each of the device's transactions.",
    }
    sources = {}
    for view, description in descriptions.items():
        batch = FileSource(
            name=f"{view}_source",
            path=offline_glob(offline_dir, view),
            timestamp_field=SNAPSHOT_TIME_COLUMN,
            created_timestamp_column=CREATED_COLUMN,
            description=description,
        )
        sources[view] = PushSource(name=f"{view}_push_source", batch_source=batch, description=description)
    return sources
