"""Data sources: for each feature view, a parquet batch source and a push source on top.

The batch source is what `fraudctl backfill` writes and training reads point-in-time;
the push source is how the stream processor writes fresh rows online. Paths depend on
the settings (`var/` differs per checkout and per test), so sources are built by a
function rather than at import time.
"""

from pathlib import Path

from feast import FileSource, PushSource

from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW, SNAPSHOT_TIME_COLUMN


def offline_path(offline_dir: Path, view: str) -> Path:
    """The parquet file holding every snapshot row of one feature view."""
    return offline_dir / f"{view}.parquet"


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
            path=str(offline_path(offline_dir, view)),
            timestamp_field=SNAPSHOT_TIME_COLUMN,
            description=description,
        )
        sources[view] = PushSource(name=f"{view}_push_source", batch_source=batch, description=description)
    return sources
