"""The one feature logic: batch backfill, the stream processor and the scoring service all use it.

Two halves, both pure Python with no I/O:

1. **Entity state → stored snapshots.** ``FeatureEngine`` folds events into per-card,
   per-merchant and per-device state and, after each change, emits a *snapshot*: the
   row a Feast feature view holds for that entity from then on. The backfill writes
   every snapshot to the offline store; the stream processor pushes them online.
2. **Snapshots + the request → the model's vector.** ``model_vector`` combines the
   snapshots that were current strictly before the transaction's time ``t`` with the
   transaction itself. Training reads those snapshots through Feast's point-in-time
   join; serving reads them from the online store. Same snapshots, same function, so
   the two vectors are equal by construction (and tests prove it).

What the snapshots mean (the "anchor" is the entity's latest event before ``t``):

* card and device aggregates are anchored at that latest event and include it:
  ``card_txn_count_1h`` counts the card's transactions in the hour ending at its
  previous transaction. A streaming store can serve that without timers; once the
  anchor is older than a window, that window's count/sum/max read 0, and
  ``card_seconds_since_prev_txn`` tells the model how old the anchor is.
* merchant aggregates are refreshed once a day: the row for day D holds what was
  known at 00:00 UTC of D. Merchants see thousands of events a month, and Feast's
  file offline store joins every entity row with every feature row of its entity,
  so per-event merchant rows would make point-in-time joins quadratic. A daily
  merchant-risk refresh is also what production systems typically run.
* the merchant fraud rate covers transactions made in the 28 days that end 7 days
  before the snapshot's day, counting only labels reported before the snapshot
  (chargebacks arrive weeks late; a label from the future would leak).

Timestamps are integer microseconds since the epoch (exact comparisons, no float drift).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.events import Transaction

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

CARD_WINDOWS = {"10m": 10 * MINUTE, "1h": HOUR, "24h": DAY, "7d": 7 * DAY}
CARD_HISTORY = 30 * DAY  # mean/std, known devices and countries
DEVICE_WINDOW = DAY
MERCHANT_FRAUD_LAG_DAYS = 7
MERCHANT_FRAUD_SPAN_DAYS = 28

# Feature-view TTLs. A snapshot older than this is treated as absent — in training by
# Feast's as-of join, in serving by `model_vector` — so both paths agree.
CARD_TTL = CARD_HISTORY
MERCHANT_TTL = DAY  # a daily row is superseded by the next day's
DEVICE_TTL = DEVICE_WINDOW

# Features of a transaction at t are read as of t - 1 µs: strictly before t.
AS_OF_OFFSET = 1
# Below one cent of spread a card has no amount habit to deviate from: z-score 0.
MIN_AMOUNT_STD = 0.01
NO_PREVIOUS_TXN_SECONDS = CARD_HISTORY / SECOND  # cap for "never seen" and "long ago"
# How late a merchant or device event may arrive (across card partitions) and still
# correct every stored snapshot it belongs in; later ones still count from then on.
LATENESS_ALLOWED = DAY

# --- what the feature views store, per entity, in order -------------------------------
CARD_WINDOW_FEATURES = [
    f"card_{agg}_{window}" for window in CARD_WINDOWS for agg in ("txn_count", "amount_sum", "amount_max")
]
CARD_FEATURES = [
    *CARD_WINDOW_FEATURES,
    "card_txn_count_30d",
    "card_amount_mean_30d",
    "card_amount_std_30d",
    "card_distinct_merchants_24h",
    "card_distinct_countries_24h",
    "card_distinct_devices_24h",
    "card_home_country",
    "card_last_txn_at_us",
    "card_known_devices",
    "card_known_devices_last_seen_us",
    "card_known_countries",
    "card_known_countries_last_seen_us",
]
MERCHANT_FEATURES = [
    "merchant_txn_count_24h",
    "merchant_txn_count_7d",
    "merchant_txn_count_28d_lag7d",
    "merchant_fraud_count_28d_lag7d",
    "merchant_fraud_rate_28d_lag7d",
    "merchant_snapshot_at_us",
]
DEVICE_FEATURES = ["device_txn_count_24h", "device_distinct_cards_24h", "device_last_txn_at_us"]

# --- the model's input vector, in order ------------------------------------------------
MODEL_FEATURES = [
    "amount_log",
    "hour_of_day",
    "is_weekend",
    "channel_is_ecommerce",
    "has_device",
    "merchant_is_foreign",
    "ip_is_foreign",
    "card_has_history",
    "card_seconds_since_prev_txn",
    *CARD_WINDOW_FEATURES,
    "card_txn_count_30d",
    "card_amount_mean_30d",
    "card_amount_std_30d",
    "card_amount_zscore_30d",
    "card_distinct_merchants_24h",
    "card_distinct_countries_24h",
    "card_distinct_devices_24h",
    "card_device_is_new_30d",
    "card_country_is_new_30d",
    "merchant_txn_count_24h",
    "merchant_txn_count_7d",
    "merchant_txn_count_28d_lag7d",
    "merchant_fraud_rate_28d_lag7d",
    "device_txn_count_24h",
    "device_distinct_cards_24h",
]

Snapshot = dict[str, Any]

_CARD_WINDOW_KEYS = [
    (width, f"card_txn_count_{w}", f"card_amount_sum_{w}", f"card_amount_max_{w}")
    for w, width in CARD_WINDOWS.items()
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime | int) -> int:
    """A timezone-aware datetime (or already microseconds) as integer microseconds since the epoch."""
    if isinstance(value, int):
        return value
    return (value - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Txn:
    """The fields of a transaction the feature logic reads."""

    transaction_id: str
    time_us: int
    card_id: str
    merchant_id: str
    merchant_country: str
    channel: str
    amount: float
    device_id: str | None = None
    ip_country: str | None = None

    @classmethod
    def of(cls, t: Transaction) -> Txn:
        """The fields of a validated event (a Kafka record, an API request)."""
        return cls(
            t.transaction_id,
            to_us(t.event_time),
            t.card_id,
            t.merchant_id,
            t.merchant_country,
            t.channel,
            t.amount,
            t.device_id,
            t.ip_country,
        )


# --- state per entity -------------------------------------------------------------------
@dataclass
class CardState:
    """The card's last 30 days, as parallel lists in time order (bisect and slice, no loops)."""

    times: list[int] = field(default_factory=list)
    amounts: list[float] = field(default_factory=list)
    merchants: list[str] = field(default_factory=list)
    countries: list[str] = field(default_factory=list)
    devices: list[str | None] = field(default_factory=list)
    country_counts: dict[str, int] = field(default_factory=dict)  # over the same 30 days
    device_last_seen: dict[str, int] = field(default_factory=dict)
    country_last_seen: dict[str, int] = field(default_factory=dict)

    def append(self, time_us: int, amount: float, merchant: str, country: str, device: str | None) -> None:
        self.times.append(time_us)
        self.amounts.append(amount)
        self.merchants.append(merchant)
        self.countries.append(country)
        self.devices.append(device)
        self.country_counts[country] = self.country_counts.get(country, 0) + 1
        if device:
            self.device_last_seen[device] = time_us
        self.country_last_seen[country] = time_us

    def forget_until(self, cutoff: int) -> None:
        """Drop events at or before ``cutoff``."""
        k = bisect_right(self.times, cutoff)
        if not k:
            return
        for country in self.countries[:k]:
            left = self.country_counts[country] - 1
            if left:
                self.country_counts[country] = left
            else:
                del self.country_counts[country]
            # A country (device) is known while its latest event is in the window; that
            # event is only ever among the ones leaving, so check just those.
            if self.country_last_seen.get(country, cutoff + 1) <= cutoff:
                del self.country_last_seen[country]
        for device in self.devices[:k]:
            if device and self.device_last_seen.get(device, cutoff + 1) <= cutoff:
                del self.device_last_seen[device]
        for column in (self.times, self.amounts, self.merchants, self.countries, self.devices):
            del column[:k]


@dataclass
class MerchantState:
    """What a merchant's daily snapshots need; valid whatever order its events arrive in.

    The stream processor's merchant task receives a merchant's transactions from every
    card partition, so they can arrive slightly out of time order. Each snapshot filters
    by time ("as known at 00:00 of day D") instead of trusting arrival order.
    """

    txn_times: list[int] = field(default_factory=list)  # sorted, last 7 days + lateness
    txn_count_by_day: dict[int, int] = field(default_factory=dict)
    # transaction day -> transaction id -> verdicts (reported_us, is_fraud) in arrival order
    verdicts_by_day: dict[int, dict[str, list[tuple[int, bool]]]] = field(default_factory=dict)

    def add_transaction(self, time_us: int) -> None:
        if self.txn_times and time_us < self.txn_times[-1]:
            insort(self.txn_times, time_us)
        else:
            self.txn_times.append(time_us)
        day = time_us // DAY
        self.txn_count_by_day[day] = self.txn_count_by_day.get(day, 0) + 1

    def add_verdict(self, txn_day: int, transaction_id: str, reported_us: int, is_fraud: bool) -> bool:
        """Record a label; False if its transaction's day has left every window."""
        if txn_day not in self.txn_count_by_day:
            return False
        self.verdicts_by_day.setdefault(txn_day, {}).setdefault(transaction_id, []).append(
            (reported_us, is_fraud)
        )
        return True

    def forget_before(self, day_start: int) -> None:
        """Drop what no snapshot at or after ``day_start`` (less the allowed lateness) reads."""
        keep_from = day_start - 7 * DAY - LATENESS_ALLOWED
        del self.txn_times[: bisect_left(self.txn_times, keep_from)]
        first_day = day_start // DAY - MERCHANT_FRAUD_LAG_DAYS - MERCHANT_FRAUD_SPAN_DAYS
        for old in [d for d in self.txn_count_by_day if d < first_day - 1]:
            del self.txn_count_by_day[old]
            self.verdicts_by_day.pop(old, None)

    @property
    def is_empty(self) -> bool:
        return not self.txn_times and not self.txn_count_by_day


@dataclass
class DeviceState:
    """A device's recent events, sorted by time (they can arrive out of order, as above)."""

    times: list[int] = field(default_factory=list)
    cards: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    id_set: set[str] = field(default_factory=set)  # the ids above, to drop redeliveries

    def add(self, time_us: int, card_id: str, transaction_id: str) -> int:
        """Insert an event; returns its index (the last one unless it arrived late)."""
        i = bisect_right(self.times, time_us)
        self.times.insert(i, time_us)
        self.cards.insert(i, card_id)
        self.ids.insert(i, transaction_id)
        self.id_set.add(transaction_id)
        return i

    def forget_until(self, cutoff: int) -> None:
        """Drop events at or before ``cutoff``."""
        k = bisect_right(self.times, cutoff)
        if k:
            self.id_set.difference_update(self.ids[:k])
            for column in (self.times, self.cards, self.ids):
                del column[:k]


def card_snapshot(state: CardState, anchor: int) -> Snapshot:
    """The card's stored features after its event at ``anchor`` (inclusive)."""
    state.forget_until(anchor - CARD_HISTORY)
    times, amounts = state.times, state.amounts
    snap: Snapshot = {}
    for width, count_key, sum_key, max_key in _CARD_WINDOW_KEYS:
        recent = amounts[bisect_right(times, anchor - width) :]
        snap[count_key] = len(recent)
        snap[sum_key] = math.fsum(recent)
        snap[max_key] = max(recent, default=0.0)
    n = len(amounts)
    if min(amounts) == max(amounts):  # exact: fsum(a)/n need not equal a (a 1e-15 "std")
        mean, std = amounts[0], 0.0
    else:
        mean = math.fsum(amounts) / n
        std = math.sqrt(math.fsum([(a - mean) ** 2 for a in amounts]) / n)
    snap["card_txn_count_30d"] = n
    snap["card_amount_mean_30d"] = mean
    snap["card_amount_std_30d"] = std
    day = bisect_right(times, anchor - DAY)
    snap["card_distinct_merchants_24h"] = len(set(state.merchants[day:]))
    snap["card_distinct_countries_24h"] = len(set(state.countries[day:]))
    snap["card_distinct_devices_24h"] = len(set(state.devices[day:]) - {None})
    # Home = the card's most frequent merchant country; ties go to the alphabetically first.
    counts = state.country_counts
    snap["card_home_country"] = min(counts, key=lambda c: (-counts[c], c))
    snap["card_last_txn_at_us"] = anchor
    for kind, seen in (("devices", state.device_last_seen), ("countries", state.country_last_seen)):
        names = sorted(seen)
        snap[f"card_known_{kind}"] = names
        snap[f"card_known_{kind}_last_seen_us"] = [seen[n] for n in names]
    return snap


def merchant_snapshot(state: MerchantState, day_start: int) -> Snapshot:
    """The merchant's stored features as known at 00:00 UTC of the day starting at ``day_start``."""
    day = day_start // DAY
    times = state.txn_times
    before = bisect_left(times, day_start)
    first_day = day - MERCHANT_FRAUD_LAG_DAYS - MERCHANT_FRAUD_SPAN_DAYS
    in_window = range(first_day, day - MERCHANT_FRAUD_LAG_DAYS)
    txns = sum(state.txn_count_by_day.get(d, 0) for d in in_window)
    frauds = 0
    for d in in_window:
        for verdicts in state.verdicts_by_day.get(d, {}).values():
            # The latest verdict reported before the snapshot wins (a chargeback can be reversed).
            known = [is_fraud for reported, is_fraud in verdicts if reported < day_start]
            frauds += bool(known) and known[-1]
    return {
        "merchant_txn_count_24h": before - bisect_left(times, day_start - DAY),
        "merchant_txn_count_7d": before - bisect_left(times, day_start - 7 * DAY),
        "merchant_txn_count_28d_lag7d": txns,
        "merchant_fraud_count_28d_lag7d": frauds,
        "merchant_fraud_rate_28d_lag7d": frauds / txns if txns else 0.0,
        "merchant_snapshot_at_us": day_start,
    }


def device_snapshot(state: DeviceState, anchor: int) -> Snapshot:
    """The device's stored features after its event at ``anchor`` (inclusive)."""
    start = bisect_right(state.times, anchor - DEVICE_WINDOW)
    end = bisect_right(state.times, anchor)
    return {
        "device_txn_count_24h": end - start,
        "device_distinct_cards_24h": len(set(state.cards[start:end])),
        "device_last_txn_at_us": anchor,
    }


# --- snapshots + request → model vector ----------------------------------------------------
def _fresh(snapshot: Snapshot | None, at_key: str, as_of: int, ttl: int) -> Snapshot | None:
    """The snapshot if it exists, is not from after ``as_of`` and lies within its TTL.

    Feast's point-in-time join keeps ``as_of - ttl <= ts <= as_of``; the online store
    returns whatever it holds, which can be newer than the transaction being scored
    (replaying old data into a store that has seen later events). A snapshot from the
    future is treated as absent, so serving never sees what training could not.
    """
    if not snapshot or snapshot.get(at_key) is None:
        return None
    return snapshot if as_of - ttl <= snapshot[at_key] <= as_of else None


def fresh_snapshots(
    time_us: int, card: Snapshot | None, merchant: Snapshot | None, device: Snapshot | None
) -> tuple[Snapshot | None, Snapshot | None, Snapshot | None]:
    """The snapshots a transaction at ``time_us`` may use: None where absent, later or expired."""
    as_of = time_us - AS_OF_OFFSET
    return (
        _fresh(card, "card_last_txn_at_us", as_of, CARD_TTL),
        _fresh(merchant, "merchant_snapshot_at_us", as_of, MERCHANT_TTL),
        _fresh(device, "device_last_txn_at_us", as_of, DEVICE_TTL),
    )


def _last_seen(names: Sequence[str] | None, times: Sequence[int] | None, key: str | None) -> int | None:
    # Lists arrive as Python lists (online) or numpy arrays (offline parquet).
    if key is None or names is None or times is None or len(names) == 0:
        return None
    for name, seen in zip(names, times, strict=False):
        if name == key:
            return int(seen)
    return None


def model_vector(
    txn: Txn, card: Snapshot | None, merchant: Snapshot | None, device: Snapshot | None
) -> list[float]:
    """The model's input vector (``MODEL_FEATURES`` order) for ``txn``.

    Args:
        txn: the transaction being scored, at time ``t``.
        card, merchant, device: the snapshots the stores hold as of ``t - 1 µs``
            (None or all-None values when the entity has none).

    Returns:
        Floats in ``MODEL_FEATURES`` order. Absent history gives documented defaults:
        zeros, "new" for device/country, and 30 days since the previous transaction.
    """
    t = txn.time_us
    card, merchant, device = fresh_snapshots(t, card, merchant, device)

    seconds = t // SECOND
    hour = (seconds // 3600) % 24
    weekday = (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
    home = card["card_home_country"] if card else None
    vector = [
        math.log1p(txn.amount),
        float(hour),
        1.0 if weekday >= 5 else 0.0,
        1.0 if txn.channel == "ecommerce" else 0.0,
        1.0 if txn.device_id else 0.0,
        1.0 if home is not None and txn.merchant_country != home else 0.0,
        1.0 if home is not None and txn.ip_country is not None and txn.ip_country != home else 0.0,
    ]
    if card is None:
        vector += [0.0, NO_PREVIOUS_TXN_SECONDS] + [0.0] * len(CARD_WINDOW_FEATURES)
        vector += [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    else:
        age = t - card["card_last_txn_at_us"]
        vector += [1.0, min(age / SECOND, NO_PREVIOUS_TXN_SECONDS)]
        for width, *keys in _CARD_WINDOW_KEYS:
            # Once the anchor is older than the window, nothing in it is that recent.
            vector += [float(card[key]) if age < width else 0.0 for key in keys]
        mean, std = float(card["card_amount_mean_30d"]), float(card["card_amount_std_30d"])
        device_seen = _last_seen(
            card["card_known_devices"], card["card_known_devices_last_seen_us"], txn.device_id
        )
        country_seen = _last_seen(
            card["card_known_countries"], card["card_known_countries_last_seen_us"], txn.merchant_country
        )
        recent_day = age < DAY
        vector += [
            float(card["card_txn_count_30d"]),
            mean,
            std,
            (txn.amount - mean) / std if std >= MIN_AMOUNT_STD else 0.0,
            float(card["card_distinct_merchants_24h"]) if recent_day else 0.0,
            float(card["card_distinct_countries_24h"]) if recent_day else 0.0,
            float(card["card_distinct_devices_24h"]) if recent_day else 0.0,
            0.0 if device_seen is not None and device_seen > t - CARD_HISTORY else 1.0,
            0.0 if country_seen is not None and country_seen > t - CARD_HISTORY else 1.0,
        ]
    if merchant is None:
        vector += [0.0, 0.0, 0.0, 0.0]
    else:
        vector += [
            float(merchant["merchant_txn_count_24h"]),
            float(merchant["merchant_txn_count_7d"]),
            float(merchant["merchant_txn_count_28d_lag7d"]),
            float(merchant["merchant_fraud_rate_28d_lag7d"]),
        ]
    if device is None or t - device["device_last_txn_at_us"] >= DEVICE_WINDOW:
        vector += [0.0, 0.0]
    else:
        vector += [float(device["device_txn_count_24h"]), float(device["device_distinct_cards_24h"])]
    return vector


def as_feature_dict(vector: Sequence[float]) -> dict[str, float]:
    return dict(zip(MODEL_FEATURES, vector, strict=True))
