"""Batch backfill: history → feature snapshots → Feast offline store → online store.

Runs the one feature logic (`core.feature_engine`) over every transaction and label of a
dataset in time order, writes each feature view's snapshots to its parquet batch source,
registers the Feast definitions and materializes the latest snapshot per entity online.
Re-running on the same data rebuilds the same store: the online store is torn down first
and the parquet files are replaced, never appended to.

`hold_back_days` leaves the last days of transactions out of the online store (the
offline store keeps everything): the online store then holds exactly what a live one
held at that day's midnight, so `fraudctl loadtest` and `fraudctl replay --score` can
send those transactions with their own event times and be scored with real history.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from core.dataset import dataset_fingerprint, read_labels, read_transactions
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW, SNAPSHOT_TIME_COLUMN, FeatureEngine
from core.features import CARD_FEATURES, DEVICE_FEATURES, MERCHANT_FEATURES, MODEL_FEATURES, Txn
from core.settings import Settings, get_settings

VIEW_COLUMNS = {
    CARD_VIEW: ("card_id", CARD_FEATURES),
    MERCHANT_VIEW: ("merchant_id", MERCHANT_FEATURES),
    DEVICE_VIEW: ("device_id", DEVICE_FEATURES),
}
BACKFILL_RECORD = "backfill.json"  # under the Feast folder: which dataset the store holds


def transactions_as_txns(frame: pd.DataFrame) -> list[Txn]:
    """Rows of a transactions frame as the feature logic's `Txn` records, in frame order."""
    times = frame["event_time"].astype("datetime64[us, UTC]").astype("int64").tolist()
    columns = ["transaction_id", "card_id", "merchant_id", "merchant_country", "channel", "amount"]
    values = [frame[c].tolist() for c in columns]
    devices = frame["device_id"].astype(object).where(frame["device_id"].notna(), None).tolist()
    ips = frame["ip_country"].astype(object).where(frame["ip_country"].notna(), None).tolist()
    return [
        Txn(tid, t, card, merchant, country, channel, float(amount), dev, ip)
        for tid, card, merchant, country, channel, amount, t, dev, ip in zip(
            *values, times, devices, ips, strict=True
        )
    ]


class _SnapshotCollector:
    """A feature-engine sink that gathers snapshot rows column-wise per view."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {view: [] for view in VIEW_COLUMNS}

    def __call__(self, view: str, entity_id: str, time_us: int, snapshot: dict[str, Any]) -> None:
        names = VIEW_COLUMNS[view][1]
        self.rows[view].append((entity_id, time_us, *(snapshot[n] for n in names)))

    def frame(self, view: str) -> pd.DataFrame:
        key, names = VIEW_COLUMNS[view]
        frame = pd.DataFrame.from_records(self.rows[view], columns=[key, SNAPSHOT_TIME_COLUMN, *names])
        # Microseconds: DuckDB cannot cast nanosecond tz-aware timestamps when materializing.
        frame[SNAPSHOT_TIME_COLUMN] = pd.to_datetime(frame[SNAPSHOT_TIME_COLUMN], unit="us", utc=True).astype(
            "datetime64[us, UTC]"
        )
        return frame


@dataclass
class BackfillResult:
    transactions: int
    labels: int
    snapshot_rows: dict[str, int]
    seconds: float
    last_event_at: pd.Timestamp  # the latest transaction or label folded in
    online_as_of: pd.Timestamp | None = None  # the online store's "now" when days are held back
    vectors: pd.DataFrame | None = None  # per transaction, when asked for


def compute_snapshots(
    transactions: pd.DataFrame, labels: pd.DataFrame, with_vectors: bool = False, progress: bool = False
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame | None]:
    """Run the feature logic over a history; return snapshot frames per view (and vectors).

    Args:
        transactions: sorted by event_time (as `read_transactions` returns them).
        labels: sorted by reported_at.
        with_vectors: also return the model vector of every transaction, computed
            directly by the engine — the reference the Feast training frame must equal.
        progress: show a progress bar.
    """
    collector = _SnapshotCollector()
    engine = FeatureEngine(sink=collector)
    txns = transactions_as_txns(transactions)
    label_times = labels["reported_at"].astype("datetime64[us, UTC]").astype("int64").tolist()
    label_rows = list(
        zip(labels["transaction_id"].tolist(), labels["is_fraud"].tolist(), label_times, strict=True)
    )
    vectors: list[list[float]] = []
    columns = [
        TextColumn("backfill"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} txns"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("backfill", total=len(txns))
        next_label = 0
        for i, txn in enumerate(txns):
            # Labels reported strictly before this transaction are known to it.
            while next_label < len(label_rows) and label_rows[next_label][2] < txn.time_us:
                tid, is_fraud, reported = label_rows[next_label]
                engine.add_label(tid, bool(is_fraud), reported)
                next_label += 1
            if with_vectors:
                vectors.append(engine.vector(txn))
            engine.add_transaction(txn)
            if i % 20_000 == 0:
                bar.update(task, completed=i)
        for tid, is_fraud, reported in label_rows[next_label:]:
            engine.add_label(tid, bool(is_fraud), reported)
        bar.update(task, completed=len(txns))
    frames = {view: collector.frame(view) for view in VIEW_COLUMNS}
    vector_frame = None
    if with_vectors:
        vector_frame = pd.DataFrame(vectors, columns=MODEL_FEATURES)
        vector_frame.insert(0, "transaction_id", [t.transaction_id for t in txns])
    return frames, vector_frame


BACKFILL_FILE = "backfill.parquet"


def write_offline(frames: dict[str, pd.DataFrame], offline_dir: Path) -> None:
    """Replace each view's offline folder with one file of its snapshots.

    Parts a stream processor wrote earlier go too: a backfill is the whole history.
    """
    from feature_repo.data_sources import CREATED_COLUMN, offline_dir_of

    for view, frame in frames.items():
        folder = offline_dir_of(offline_dir, view)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.parquet"):
            old.unlink()
        frame = frame.assign(**{CREATED_COLUMN: frame[SNAPSHOT_TIME_COLUMN]})
        tmp = folder / f"{BACKFILL_FILE}.tmp"
        frame.to_parquet(tmp, index=False)
        tmp.replace(folder / BACKFILL_FILE)


def online_cut(transactions: pd.DataFrame, hold_back_days: int) -> pd.Timestamp | None:
    """The midnight (UTC) that starts the last `hold_back_days` days of transactions (None: 0).

    Midnight, because merchant rows are daily: the row written at the cut is the one every
    held-back transaction of that day reads, online as in training.
    """
    if hold_back_days < 0:
        raise ValueError(f"--hold-back-days must be 0 or more, got {hold_back_days}")
    if not hold_back_days:
        return None
    times = transactions["event_time"]
    cut = times.max().floor("D") - pd.Timedelta(days=hold_back_days - 1)
    if cut <= times.min():
        raise ValueError(
            f"--hold-back-days {hold_back_days} would hold back every transaction "
            f"({times.min():%Y-%m-%d} to {times.max():%Y-%m-%d})"
        )
    return cut


def backfill(
    data_dir: Path,
    settings: Settings,
    with_vectors: bool = False,
    progress: bool = False,
    hold_back_days: int = 0,
) -> BackfillResult:
    """Compute features for a dataset into the offline store and materialize them online.

    Args:
        hold_back_days: Materialize online only what was known at the midnight that starts
            the dataset's last N days of transactions (see the module docstring).
    """
    # Feast is imported here, not at the top: it takes seconds, and `fraudctl --help` should not.
    from feature_repo.store import apply_definitions, open_store

    started = time.perf_counter()
    transactions, labels = read_transactions(data_dir), read_labels(data_dir)
    if transactions.empty:
        raise ValueError(f"{data_dir} holds no transactions")
    cut = online_cut(transactions, hold_back_days)
    frames, vectors = compute_snapshots(transactions, labels, with_vectors=with_vectors, progress=progress)
    write_offline(frames, settings.offline_dir)

    store = open_store(settings)
    if settings.feast_dir.joinpath("registry.db").exists():
        store.teardown()  # drop online tables so a re-run leaves exactly this data's state
        store = open_store(settings)
    apply_definitions(store, settings)
    stamps = [f[SNAPSHOT_TIME_COLUMN] for f in frames.values() if not f.empty]
    start = min(s.min() for s in stamps).to_pydatetime()
    end = max(s.max() for s in stamps).to_pydatetime() + timedelta(seconds=1)
    # Feast materializes each entity's latest row in [start, end], both ends included: the
    # merchants' rows written at the cut are in, transactions after it are not.
    with contextlib.redirect_stdout(io.StringIO()):  # Feast prints its own colour-coded progress
        store.materialize(start_date=start, end_date=end if cut is None else cut.to_pydatetime())
    record = {
        "data_dir": str(Path(data_dir).resolve()),
        "fingerprint": dataset_fingerprint(data_dir),
        "online_as_of": None if cut is None else cut.isoformat(),
    }
    (settings.feast_dir / BACKFILL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return BackfillResult(
        transactions=len(transactions),
        labels=len(labels),
        snapshot_rows={view: len(f) for view, f in frames.items()},
        seconds=time.perf_counter() - started,
        last_event_at=max(transactions["event_time"].max(), labels["reported_at"].max())
        if not labels.empty
        else transactions["event_time"].max(),
        online_as_of=cut,
        vectors=vectors,
    )


def backfill_record(settings: Settings) -> dict[str, Any] | None:
    """What the feature store was last backfilled from: data_dir, fingerprint, online_as_of."""
    path = settings.feast_dir / BACKFILL_RECORD
    return dict(json.loads(path.read_text())) if path.exists() else None


def backfilled_fingerprint(settings: Settings) -> str | None:
    """The fingerprint of the dataset the feature store was last backfilled from (None: never)."""
    record = backfill_record(settings)
    return None if record is None else str(record["fingerprint"])


def cli(
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset folder written by `simulate` or `import`.")
    ] = None,
    hold_back_days: Annotated[
        int,
        typer.Option(
            help="Leave the last N days of transactions out of the online store (offline keeps "
            "them), so `fraudctl loadtest` can send them against the history just before them."
        ),
    ] = 0,
) -> None:
    """Compute features from a dataset into the Feast offline store and materialize them online.

    Example: fraudctl backfill --data var/data
    Example: fraudctl backfill --data var/data --hold-back-days 1   # then: fraudctl serve, fraudctl loadtest
    """
    settings = get_settings()
    data_dir = data or settings.demo_data_dir
    console = Console()
    # A missing or invalid dataset raises DatasetError: fraudctl's main prints it as one line.
    result = backfill(data_dir, settings, progress=True, hold_back_days=hold_back_days)
    rows = ", ".join(f"{view} {n:,}" for view, n in result.snapshot_rows.items())
    console.print(
        f"[green]backfilled[/] {result.transactions:,} transactions and {result.labels:,} labels "
        f"in {result.seconds:.1f}s → snapshot rows: {rows}"
    )
    if result.online_as_of is not None:
        console.print(
            f"online store as of {result.online_as_of:%Y-%m-%d %H:%M} UTC: the transactions after it "
            "are held back for `fraudctl loadtest` (and `fraudctl replay --score URL --after "
            f"{result.online_as_of:%Y-%m-%d}`)"
        )
