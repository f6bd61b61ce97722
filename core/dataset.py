"""The on-disk layout that `simulate` and `import` write and every later stage reads.

    DIR/
      manifest.json                         what made it (command, parameters, counts)
      transactions/date=YYYY-MM-DD/part-0.parquet   by UTC day of event_time
      labels/date=YYYY-MM-DD/part-0.parquet         by UTC day of reported_at

A dataset is written into a temporary sibling folder and renamed into place at the
end, so a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.events import LABEL_ARROW_SCHEMA, TRANSACTION_ARROW_SCHEMA

MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """The folder is not a dataset that `simulate` or `import` wrote."""


def _write_partitioned(frame: pd.DataFrame, schema: pa.Schema, day_column: str, folder: Path) -> None:
    folder.mkdir(parents=True)
    # Group on the floored day and format only the group keys: strftime per row is slow.
    for day, part in frame.groupby(frame[day_column].dt.floor("D"), sort=True):
        table = pa.Table.from_pandas(part[schema.names], schema=schema, preserve_index=False)
        partition = folder / f"date={day:%Y-%m-%d}"
        partition.mkdir()
        pq.write_table(table, partition / "part-0.parquet", compression="zstd")


def write_dataset(
    out: Path, transactions: pd.DataFrame, labels: pd.DataFrame, manifest: dict[str, Any]
) -> None:
    """Write transactions and labels to ``out``, replacing what was there, all or nothing."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        # Never replace a folder this project did not write (think `--out ~`).
        raise DatasetError(f"{out} is not empty and holds no {MANIFEST}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _write_partitioned(transactions, TRANSACTION_ARROW_SCHEMA, "event_time", staging / "transactions")
        _write_partitioned(labels, LABEL_ARROW_SCHEMA, "reported_at", staging / "labels")
        manifest = {**manifest, "transactions": len(transactions), "labels": len(labels)}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        # Swap: the old dataset is moved aside before the new one takes its place, so a crash
        # at any moment leaves either the old or the new dataset under `out`'s parent.
        previous = out.with_name(f".{out.name}-previous")
        shutil.rmtree(previous, ignore_errors=True)
        if out.exists():
            out.rename(previous)
        staging.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read(folder: Path, schema: pa.Schema) -> pd.DataFrame:
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found: run `fraudctl simulate` or `fraudctl import` first")
    files = sorted(folder.glob("date=*/*.parquet"))
    if not files:
        return schema.empty_table().to_pandas()
    table = pa.concat_tables(pq.read_table(f, schema=schema) for f in files)
    return table.to_pandas()


def read_transactions(data_dir: Path) -> pd.DataFrame:
    """All transactions of a dataset, sorted by event time."""
    frame = _read(Path(data_dir) / "transactions", TRANSACTION_ARROW_SCHEMA)
    return frame.sort_values("event_time", kind="stable", ignore_index=True)


def read_labels(data_dir: Path) -> pd.DataFrame:
    """All labels of a dataset, sorted by the time they were reported."""
    frame = _read(Path(data_dir) / "labels", LABEL_ARROW_SCHEMA)
    return frame.sort_values("reported_at", kind="stable", ignore_index=True)


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest `simulate` or `import` wrote: how the dataset was made, and its counts."""
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise DatasetError(
            f"{data_dir} has no {MANIFEST}: run `fraudctl simulate` or `fraudctl import` first"
        )
    return dict(json.loads(path.read_text()))


def dataset_fingerprint(data_dir: Path) -> str:
    """A sha256 over the manifest and every parquet file (path and bytes): same data, same print.

    Training logs it with each run, and `backfill` records it, so `train` knows whether
    the feature store holds this very dataset.
    """
    root = Path(data_dir)
    digest = hashlib.sha256()
    for path in [root / MANIFEST, *sorted(root.glob("*/date=*/*.parquet"))]:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_timestamps_unique(times: pd.Series) -> pd.Series:
    """Nudge equal timestamps apart by 1 microsecond each, keeping their order.

    Features use events *strictly before* t; two events at the same instant would make
    "before" ambiguous (the batch engine would see one, Feast's as-of join would not).
    Imported data often has second-resolution timestamps, so ties are broken here, once,
    in file order. Besides truncation to the schema's microseconds, it is the only change
    ever made to a user's timestamps.
    """
    order = times.sort_values(kind="stable")
    values = order.to_numpy(dtype="datetime64[us]").astype("int64")
    # Running maximum of (value - position) restores a strictly increasing sequence.
    positions = np.arange(len(values), dtype="int64")
    fixed = np.maximum.accumulate(values - positions) + positions
    result = pd.Series(pd.to_datetime(fixed, unit="us", utc=True).as_unit("us"), index=order.index)
    return result.reindex(times.index)
