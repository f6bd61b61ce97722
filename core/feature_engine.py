"""Folds events, in time order, into entity state and emits the snapshots Feast stores.

The batch backfill feeds it a whole history; the stream processor feeds it micro-batches.
Either way each emitted snapshot is ``(view, entity_id, time_us, values)`` and the
latest snapshot per entity is exactly what the online store holds.

Order matters and is the caller's contract: events arrive sorted by time, and a
transaction and a label at the same instant are fed transaction first (a label
reported at ``t`` is not known to a transaction at ``t``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.features import (
    DAY,
    MERCHANT_FRAUD_LAG_DAYS,
    MERCHANT_FRAUD_SPAN_DAYS,
    CardState,
    DeviceState,
    MerchantState,
    Snapshot,
    Txn,
    card_snapshot,
    device_snapshot,
    merchant_snapshot,
    model_vector,
)

CARD_VIEW = "card_velocity"
MERCHANT_VIEW = "merchant_risk"
DEVICE_VIEW = "device_activity"

# The column holding a snapshot's time in the offline store (Feast's timestamp_field).
SNAPSHOT_TIME_COLUMN = "event_timestamp"

Sink = Callable[[str, str, int, Snapshot], None]

# How long a transaction id is remembered: long enough to place any label that can still
# change a merchant fraud rate, and to drop redelivered duplicates.
_TXN_MEMORY_DAYS = MERCHANT_FRAUD_LAG_DAYS + MERCHANT_FRAUD_SPAN_DAYS + 1


@dataclass
class EngineCounts:
    transactions: int = 0
    duplicate_transactions: int = 0
    labels: int = 0
    unmatched_labels: int = 0


@dataclass
class FeatureEngine:
    """Entity state for every card, merchant and device, and their latest snapshots."""

    sink: Sink | None = None
    cards: dict[str, CardState] = field(default_factory=dict)
    merchants: dict[str, MerchantState] = field(default_factory=dict)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    latest: dict[str, dict[str, Snapshot]] = field(
        default_factory=lambda: {CARD_VIEW: {}, MERCHANT_VIEW: {}, DEVICE_VIEW: {}}
    )
    counts: EngineCounts = field(default_factory=EngineCounts)
    # transaction id -> (merchant_id, day), and the ids per day so old days drop cheaply
    _txn_index: dict[str, tuple[str, int]] = field(default_factory=dict)
    _txn_ids_by_day: dict[int, list[str]] = field(default_factory=dict)
    _day: int | None = None  # the last day whose 00:00 merchant snapshots were emitted

    def _emit(self, view: str, entity_id: str, time_us: int, snapshot: Snapshot) -> None:
        self.latest[view][entity_id] = snapshot
        if self.sink is not None:
            self.sink(view, entity_id, time_us, snapshot)

    def advance_to(self, time_us: int) -> None:
        """Emit the 00:00 UTC merchant snapshots of every day that starts at or before ``time_us``."""
        day = time_us // DAY
        if self._day is None:
            self._day = day
            return
        while self._day < day:
            self._day += 1
            day_start = self._day * DAY
            for merchant_id in sorted(self.merchants):
                state = self.merchants[merchant_id]
                snapshot = merchant_snapshot(state, day_start)
                if not state.txn_times and not state.txn_count_by_day:
                    del self.merchants[merchant_id]  # nothing left in any window
                self._emit(MERCHANT_VIEW, merchant_id, day_start, snapshot)
            for old in [d for d in self._txn_ids_by_day if d < self._day - _TXN_MEMORY_DAYS]:
                for txn_id in self._txn_ids_by_day.pop(old):
                    self._txn_index.pop(txn_id, None)

    def vector(self, txn: Txn) -> list[float]:
        """The model vector of ``txn`` from the snapshots current strictly before its time."""
        self.advance_to(txn.time_us - 1)
        latest = self.latest
        return model_vector(
            txn,
            latest[CARD_VIEW].get(txn.card_id),
            latest[MERCHANT_VIEW].get(txn.merchant_id),
            latest[DEVICE_VIEW].get(txn.device_id) if txn.device_id else None,
        )

    def add_transaction(self, txn: Txn) -> bool:
        """Fold a transaction in; False (and no change) if its id was already seen."""
        if txn.transaction_id in self._txn_index:
            self.counts.duplicate_transactions += 1
            return False
        self.advance_to(txn.time_us)
        self.counts.transactions += 1
        t, day = txn.time_us, txn.time_us // DAY
        self._txn_index[txn.transaction_id] = (txn.merchant_id, day)
        self._txn_ids_by_day.setdefault(day, []).append(txn.transaction_id)

        card = self.cards.setdefault(txn.card_id, CardState())
        card.append(t, txn.amount, txn.merchant_id, txn.merchant_country, txn.device_id)
        self._emit(CARD_VIEW, txn.card_id, t, card_snapshot(card, t))

        merchant = self.merchants.setdefault(txn.merchant_id, MerchantState())
        merchant.txn_times.append(t)
        merchant.txn_count_by_day[day] = merchant.txn_count_by_day.get(day, 0) + 1

        if txn.device_id:
            device = self.devices.setdefault(txn.device_id, DeviceState())
            device.events.append((t, txn.card_id))
            self._emit(DEVICE_VIEW, txn.device_id, t, device_snapshot(device, t))
        return True

    def add_label(self, transaction_id: str, is_fraud: bool, reported_us: int) -> bool:
        """Fold a label in at its report time; False if its transaction is unknown or too old."""
        self.advance_to(reported_us)
        self.counts.labels += 1
        placed = self._txn_index.get(transaction_id)
        if placed is None:
            self.counts.unmatched_labels += 1
            return False
        merchant_id, day = placed
        state = self.merchants.get(merchant_id)
        if state is None or day not in state.txn_count_by_day:
            # The transaction's day has left every window: the label can change nothing,
            # and recording it would leave a fraud entry no pruning ever reaches.
            self.counts.unmatched_labels += 1
            return False
        frauds = state.fraud_txn_ids_by_day.setdefault(day, set())
        # A set, so a redelivered label counts once and a later "not fraud" verdict undoes it.
        if is_fraud:
            frauds.add(transaction_id)
        else:
            frauds.discard(transaction_id)
        return True
