"""Training–serving skew: the vector the service scored against the one training builds.

For a seeded sample of the decisions a model scored from the online store (`served_by`
champion or canary: fallback rows scored request-time defaults on purpose, kill-switch rows
no model), each transaction's vector is rebuilt offline by the training path itself,
`pipelines.training_data.build_training_frame`: Feast's point-in-time join as of
`event_time` - 1 µs, then `model_vector`. The service scores a transaction before the stream
has counted it, so the features of t come from the events strictly before t, in both paths
(DESIGN.md section 1). Then each feature is compared with the logged value.

**Equality is exact in float32**, as in the skew tests (`vector_mismatches` of
`benchmarks/stream_fed_scoring.py`): the service casts `model_vector`'s floats to float32 and
logs that very array (JSON holds a float32 exactly); the offline vector is cast the same way,
so one computation gives the same bits on both sides and rounding is no source of difference.
`tolerance` (default 0) only adds slack. Rounding does enter in one place: without the raw
requests (`transactions`), the amount is the frame's `expm1(amount_log)`, off by up to one
float32 step of `amount_log`; `card_amount_zscore_30d` divides it by the card's std, so that
feature allows exactly this bound, row by row (`_zscore_bound`).

**A stale online store is told apart, not hidden.** Every mismatch counts in the share (the
`FeatureSkewHigh` alert reads it). Then each (row, entity) that mismatches is asked whether
the store was behind: a store that had not yet written the entity's latest events (the
stream processor lagging: README, 18.8 % of vectors at ~680 req/s) serves the snapshot of an
earlier event. So the entity's snapshot is taken as of its previous event, then the one
before (up to `MAX_EVENTS_BEHIND`, or until it has expired at t), by the same join; if the
served values of that entity's features equal one of those vectors, the mismatch is *stale*
by that many events. Anything else (a feature computed differently, a corrupted row, an
offline store behind the online one, a store further behind) stays *unexplained*. Cost: one
join for the check, one more for the rows that differ, one per step back.

Check rows the offline store has caught up with: the stream processor writes its offline
parts at each commit (every 5 s), so rows scored seconds ago may lack their predecessors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.features import CARD_FEATURES, DEVICE_FEATURES, MERCHANT_FEATURES, MIN_AMOUNT_STD, MODEL_FEATURES

if TYPE_CHECKING:
    from feast import FeatureStore

    from core.settings import Settings
    from monitoring.metrics import MonitorMetrics

MODEL_SERVED = ("champion", "canary")  # a model scored the online store's features
MAX_EVENTS_BEHIND = 5  # how far back a stale store is looked for (one Feast join per step)
REQUEST_COLUMNS = ["amount", "channel", "merchant_country", "ip_country"]  # what the log lacks

# Which state each feature is computed from (as `benchmarks/stream_fed_scoring.py` has it):
# the two "foreign" flags compare the request with the card's home country, card state.
REQUEST_ONLY = ["amount_log", "hour_of_day", "is_weekend", "channel_is_ecommerce", "has_device"]
FEATURE_SOURCE = {
    f: "request"
    if f in REQUEST_ONLY
    else "merchant"
    if f.startswith(("merchant_txn", "merchant_fraud"))
    else "device"
    if f.startswith("device_")
    else "card"
    for f in MODEL_FEATURES
}
# Per stored source: its columns in Feast's result and the snapshot's own time.
ENTITIES = {
    "card": (CARD_FEATURES, "card_last_txn_at_us"),
    "merchant": (MERCHANT_FEATURES, "merchant_snapshot_at_us"),
    "device": (DEVICE_FEATURES, "device_last_txn_at_us"),
}
ZSCORE = "card_amount_zscore_30d"
# Without the raw requests these would be compared with themselves, or need what is not logged.
UNCHECKED_WITHOUT_REQUEST = {
    "amount_log": "the frame's amount is expm1 of the logged amount_log itself",
    "channel_is_ecommerce": "the channel is read back from this very flag",
    "merchant_is_foreign": "needs merchant_country, which the prediction log does not carry",
    "card_country_is_new_30d": "needs merchant_country, which the prediction log does not carry",
    "ip_is_foreign": "needs ip_country, which the prediction log does not carry",
}
_NO_LABELS = pd.DataFrame(
    {
        "transaction_id": pd.Series(dtype=object),
        "is_fraud": pd.Series(dtype=bool),
        "reported_at": pd.Series(dtype="datetime64[us, UTC]"),
    }
)


@dataclass(frozen=True)
class FeatureSkew:
    feature: str
    source: str  # request | card | merchant | device
    rows_compared: int
    mismatches: int
    stale: int  # of the mismatches, those a stale online store explains
    max_abs_difference: float
    example_transaction_id: str | None  # the largest difference
    example_served: float | None
    example_offline: float | None  # training's value, in float32

    @property
    def mismatch_share(self) -> float:
        return self.mismatches / self.rows_compared if self.rows_compared else float("nan")

    @property
    def stale_share(self) -> float:
        return self.stale / self.rows_compared if self.rows_compared else float("nan")


@dataclass(frozen=True)
class SkewReport:
    rows_eligible: int  # model-scored rows in the frame (with a raw request, if one was asked for)
    rows_checked: int
    rows_mismatched: int  # at least one feature differs
    rows_stale: int  # ... and every difference is explained by a stale online store
    stale_events_behind: dict[int, int]  # events the store was behind -> rows (the row's worst entity)
    features: dict[str, FeatureSkew]  # every feature compared, in MODEL_FEATURES order
    unchecked: dict[str, str]  # feature -> why it could not be compared
    with_raw_requests: bool
    tolerance: float
    seconds: float
    mismatched_features: list[str] = field(init=False)  # by mismatch share, largest first
    unexplained_features: list[str] = field(init=False)  # with a mismatch no stale store explains

    def __post_init__(self) -> None:
        def by_share(names: list[str], count: Any) -> list[str]:
            return sorted(names, key=lambda f: (-count(self.features[f]), f))

        differ = [f for f, s in self.features.items() if s.mismatches]
        unexplained = [f for f, s in self.features.items() if s.mismatches > s.stale]
        object.__setattr__(self, "mismatched_features", by_share(differ, lambda s: s.mismatches))
        object.__setattr__(
            self, "unexplained_features", by_share(unexplained, lambda s: s.mismatches - s.stale)
        )

    @property
    def rows_unexplained(self) -> int:
        return self.rows_mismatched - self.rows_stale

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; NaN (no row compared) becomes None."""
        out = asdict(self)
        out["rows_unexplained"] = self.rows_unexplained
        out["stale_events_behind"] = {str(k): v for k, v in self.stale_events_behind.items()}
        for name, skew in self.features.items():
            out["features"][name] |= {"mismatch_share": skew.mismatch_share, "stale_share": skew.stale_share}
        return _json_safe(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def check_skew(
    settings: Settings,
    predictions: pd.DataFrame,
    sample: int = 500,
    seed: int = 7,
    tolerance: float = 0.0,
    transactions: pd.DataFrame | None = None,
) -> SkewReport:
    """Recompute a seeded sample of served vectors offline (the training path) and compare.

    Args:
        settings: the monitor's settings; their Feast project's offline store is read.
        predictions: the monitor's frame: transaction_id, card_id, merchant_id, device_id,
            event_time (UTC), served_by, amount and one column per MODEL_FEATURES name.
        sample: rows compared at most, drawn with `seed` among the model-scored rows.
        tolerance: absolute slack beyond exact float32 equality (0: the skew tests' notion).
        transactions: the raw requests (transaction_id plus REQUEST_COLUMNS, any superset of
            the rows; e.g. `read_transactions(data_dir)`). With them every feature is compared
            and only rows they hold are sampled; without them the features in
            UNCHECKED_WITHOUT_REQUEST are not compared.
    """
    from feature_repo.store import open_store
    from pipelines.training_data import build_training_frame

    start = time.perf_counter()
    eligible = predictions[predictions["served_by"].isin(MODEL_SERVED)]
    if transactions is not None:
        eligible = eligible[eligible["transaction_id"].isin(transactions["transaction_id"])]
    # Sorted first, so the same rows are drawn whatever order the frame was built in.
    ordered = eligible.sort_values("transaction_id", kind="stable")
    rows = ordered.sample(n=min(sample, len(ordered)), random_state=seed).reset_index(drop=True)
    unchecked = {} if transactions is not None else dict(UNCHECKED_WITHOUT_REQUEST)
    checked = [f for f in MODEL_FEATURES if f not in unchecked]
    served = rows[MODEL_FEATURES].to_numpy(np.float64)
    offline32 = np.zeros(served.shape)
    mismatch = np.zeros(served.shape, dtype=bool)
    behind = {entity: np.zeros(len(rows), dtype=int) for entity in ENTITIES}
    if len(rows):
        request = _request_frame(rows, transactions)
        store = open_store(settings)
        offline = build_training_frame(store, request, _NO_LABELS, request["event_time"].max())
        offline64 = offline[MODEL_FEATURES].to_numpy(np.float64)
        offline32 = offline64.astype(np.float32).astype(np.float64)  # what the model would receive
        # Without the raw requests the amount is rebuilt from the log: the z-score's bound applies.
        rebuilt = request["amount"].to_numpy(np.float64) if transactions is None else None
        allowed = _allowed(served, offline64, tolerance, rebuilt)
        mismatch = ~(np.abs(served - offline32) <= allowed)  # NaN on either side is a mismatch
        mismatch[:, [MODEL_FEATURES.index(f) for f in unchecked]] = False
        behind = _events_behind(store, request, served, mismatch, checked, tolerance, rebuilt)
    stale = np.zeros(served.shape, dtype=bool)
    for j, f in enumerate(MODEL_FEATURES):
        if FEATURE_SOURCE[f] in ENTITIES:
            stale[:, j] = mismatch[:, j] & (behind[FEATURE_SOURCE[f]] > 0)
    ids = rows["transaction_id"].astype(str).to_numpy()
    features = {
        f: _feature_skew(f, ids, served[:, j], offline32[:, j], mismatch[:, j], stale[:, j])
        for j, f in enumerate(MODEL_FEATURES)
        if f not in unchecked
    }
    differs = mismatch.any(axis=1)
    all_stale = differs & (mismatch == stale).all(axis=1)
    worst_behind = np.column_stack(list(behind.values())).max(axis=1)  # the row's worst entity
    counts = pd.Series(worst_behind[all_stale]).value_counts().sort_index()
    return SkewReport(
        rows_eligible=len(eligible),
        rows_checked=len(rows),
        rows_mismatched=int(differs.sum()),
        rows_stale=int(all_stale.sum()),
        stale_events_behind={int(k): int(v) for k, v in counts.items()},
        features=features,
        unchecked=unchecked,
        with_raw_requests=transactions is not None,
        tolerance=tolerance,
        seconds=round(time.perf_counter() - start, 3),
    )


def _feature_skew(
    feature: str,
    ids: np.ndarray,
    served: np.ndarray,
    offline: np.ndarray,
    mismatch: np.ndarray,
    stale: np.ndarray,
) -> FeatureSkew:
    difference = np.abs(served - offline)
    # The example: the largest difference among the mismatches (a NaN one first).
    worst = int(np.argmax(np.where(mismatch, np.nan_to_num(difference, nan=np.inf), -1.0))) if len(ids) else 0
    example = bool(len(ids)) and bool(mismatch[worst])
    return FeatureSkew(
        feature=feature,
        source=FEATURE_SOURCE[feature],
        rows_compared=len(ids),
        mismatches=int(mismatch.sum()),
        stale=int(stale.sum()),
        max_abs_difference=float(np.nanmax(difference)) if len(ids) else float("nan"),
        example_transaction_id=str(ids[worst]) if example else None,
        example_served=float(served[worst]) if example else None,
        example_offline=float(offline[worst]) if example else None,
    )


def _request_frame(rows: pd.DataFrame, transactions: pd.DataFrame | None) -> pd.DataFrame:
    """The sampled transactions as training reads them (`build_training_frame`'s input)."""
    keys = rows[["transaction_id", "card_id", "merchant_id", "device_id"]].copy()
    keys["event_time"] = pd.to_datetime(rows["event_time"], utc=True).astype("datetime64[us, UTC]")
    keys["device_id"] = keys["device_id"].astype(object).where(keys["device_id"].notna(), None)
    if transactions is not None:
        raw = transactions[["transaction_id", *REQUEST_COLUMNS]].drop_duplicates("transaction_id")
        frame = keys.merge(raw, on="transaction_id", how="left", validate="1:1")
    else:
        frame = keys.assign(
            amount=rows["amount"].to_numpy(np.float64),
            channel=np.where(rows["channel_is_ecommerce"].to_numpy() == 1, "ecommerce", "card_present"),
            merchant_country="",  # unknown: the features that read it are not compared
            ip_country=None,
        )
    return frame.assign(scenario=None)  # a simulator tag training keeps; none here


def _allowed(
    served: np.ndarray, offline: np.ndarray, tolerance: float, rebuilt_amount: np.ndarray | None
) -> np.ndarray:
    """The largest |served - offline| that is still equal, per value (offline in float64)."""
    allowed = np.full(served.shape, tolerance)
    if rebuilt_amount is not None:
        allowed[:, MODEL_FEATURES.index(ZSCORE)] += _zscore_bound(rebuilt_amount, served, offline)
    return allowed


def _zscore_bound(amount: np.ndarray, served: np.ndarray, offline: np.ndarray) -> np.ndarray:
    """How far the z-score may move when the amount is `expm1` of the logged float32 amount_log.

    The true log1p(amount) lies within one float32 step `h` of the logged value, so the amount
    within (1 + amount)·expm1(h); the z-score, (amount - mean) / std, within that over the
    std; and each side then rounds it to float32 (half a step each, one step in all).
    """
    logged = served[:, MODEL_FEATURES.index("amount_log")].astype(np.float32)
    amount_error = (1 + amount) * np.expm1(np.spacing(np.abs(logged)).astype(np.float64))
    std = offline[:, MODEL_FEATURES.index("card_amount_std_30d")]
    z = offline[:, MODEL_FEATURES.index(ZSCORE)]
    z_error = np.where(std >= MIN_AMOUNT_STD, amount_error / np.where(std > 0, std, 1.0), 0.0)
    return z_error + np.spacing(np.abs(z + z_error).astype(np.float32)).astype(np.float64)


def _events_behind(
    store: FeatureStore,
    request: pd.DataFrame,
    served: np.ndarray,
    mismatch: np.ndarray,
    checked: list[str],
    tolerance: float,
    rebuilt_amount: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Per entity, per row: by how many of the entity's events the served snapshot was behind
    the point-in-time one (0: not stale, or no mismatch to explain)."""
    from core.features import fresh_snapshots, model_vector
    from pipelines.backfill import transactions_as_txns
    from pipelines.training_data import _snapshots, historical_snapshots

    behind = {entity: np.zeros(len(request), dtype=int) for entity in ENTITIES}
    columns = {e: [MODEL_FEATURES.index(f) for f in checked if FEATURE_SOURCE[f] == e] for e in ENTITIES}
    todo = [(e, int(row)) for e in ENTITIES for row in np.flatnonzero(mismatch[:, columns[e]].any(axis=1))]
    if not todo:
        return behind
    positions = sorted({row for _, row in todo})
    subset = request.iloc[positions].reset_index(drop=True)
    at = {row: i for i, row in enumerate(positions)}
    txns = transactions_as_txns(subset)
    joined = historical_snapshots(store, subset)
    truth = {e: _snapshots(joined, names, key) for e, (names, key) in ENTITIES.items()}
    older = {e: list(snaps) for e, snaps in truth.items()}  # walked back one event per step
    for events in range(1, MAX_EVENTS_BEHIND + 1):
        # Nothing is older than no snapshot: such a mismatch is not staleness.
        anchors = {(e, row): snap[ENTITIES[e][1]] for e, row in todo if (snap := older[e][at[row]])}
        todo = list(anchors)
        if not todo:
            break
        # Joined as of 1 µs before the snapshot's own event: the state one event earlier.
        query = subset.iloc[[at[row] for _, row in todo]].assign(
            transaction_id=[f"{e}:{row}" for e, row in todo],
            event_time=pd.to_datetime(list(anchors.values()), unit="us", utc=True),
        )
        lagged = historical_snapshots(store, query)
        earlier = {e: _snapshots(lagged, names, key) for e, (names, key) in ENTITIES.items()}
        left = []
        for k, (e, row) in enumerate(todo):
            i = at[row]
            snaps = {x: truth[x][i] for x in ENTITIES} | {e: earlier[e][k]}
            device = snaps["device"] if txns[i].device_id else None  # as build_training_frame
            vector = np.asarray([model_vector(txns[i], snaps["card"], snaps["merchant"], device)])
            amount = None if rebuilt_amount is None else rebuilt_amount[[row]]
            allowed = _allowed(served[[row]], vector, tolerance, amount)[0]
            gap = np.abs(served[row] - vector[0].astype(np.float32).astype(np.float64))
            cols = columns[e]
            if np.all(gap[cols] <= allowed[cols]):
                behind[e][row] = events
            elif fresh_snapshots(txns[i].time_us, *snaps.values())[list(ENTITIES).index(e)] is not None:
                older[e][i] = earlier[e][k]
                left.append((e, row))
            # else: expired at t (a merchant's day-old row), as every older one: the defaults again
        todo = left
    return behind


def publish_skew(metrics: MonitorMetrics, report: SkewReport) -> None:
    """One check into the monitor's gauges (`MonitorMetrics.set_skew`); NaN where not compared."""
    for feature in MODEL_FEATURES:
        skew = report.features.get(feature)
        if skew is None:
            metrics.set_skew(feature, float("nan"), float("nan"), float("nan"))
        else:
            metrics.set_skew(feature, skew.mismatch_share, skew.stale_share, skew.max_abs_difference)
    metrics.skew_rows_checked.inc(report.rows_checked)
