"""Folds events into entity state and emits the snapshots Feast stores.

Three parts, one per entity kind, so that a stream processor can own each by its key:

* ``CardFeatures`` sees a card's transactions in order (the `transactions` topic is
  keyed by card) and remembers recent transaction ids: redeliveries are dropped and a
  label finds its transaction's merchant there.
* ``MerchantFeatures`` and ``DeviceFeatures`` see transactions from every card, which
  in a stream come from several partitions and so can arrive slightly out of time
  order. Their state is kept sorted and a late event re-emits every snapshot it
  belongs in, so arrival order changes when a row is written, never what it says.

``FeatureEngine`` runs all three in one process, in time order: the batch backfill and
the unit tests use it. Each emitted snapshot is ``(view, entity_id, time_us, values)``;
the latest per entity is what the online store holds.

Order contract for ``FeatureEngine``: events sorted by time, and a transaction and a
label at the same instant fed transaction first (a label reported at ``t`` is not known
to a transaction at ``t``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from core.features import (
    DAY,
    DEVICE_WINDOW,
    LATENESS_ALLOWED,
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
_TXN_MEMORY = (MERCHANT_FRAUD_LAG_DAYS + MERCHANT_FRAUD_SPAN_DAYS + 1) * DAY


class OutOfOrderError(ValueError):
    """A card's transaction older than one already folded in (the stream dead-letters it)."""


def _no_sink(view: str, entity_id: str, time_us: int, snapshot: Snapshot) -> None:
    pass


@dataclass
class CardFeatures:
    """Cards' state, plus where each recent transaction happened (for dedup and labels)."""

    sink: Sink = _no_sink
    cards: dict[str, CardState] = field(default_factory=dict)
    # transaction id -> (merchant_id, time_us), in arrival (= time) order, for _TXN_MEMORY
    txn_index: dict[str, tuple[str, int]] = field(default_factory=dict)
    duplicates: int = 0

    def add(self, txn: Txn) -> bool:
        """Fold a transaction in; False (and no change) if its id was already seen."""
        if txn.transaction_id in self.txn_index:
            self.duplicates += 1
            return False
        card = self.cards.get(txn.card_id)
        if card is None:
            card = self.cards[txn.card_id] = CardState()
        elif card.times and txn.time_us < card.times[-1]:
            raise OutOfOrderError(
                f"event_time is before the card's latest transaction ({card.times[-1]} µs): "
                "a card's transactions must be published in time order"
            )
        t = txn.time_us
        card.append(t, txn.amount, txn.merchant_id, txn.merchant_country, txn.device_id)
        self.sink(CARD_VIEW, txn.card_id, t, card_snapshot(card, t))
        self.txn_index[txn.transaction_id] = (txn.merchant_id, t)
        self._forget(t - _TXN_MEMORY)
        return True

    def merchant_of(self, transaction_id: str) -> tuple[str, int] | None:
        """(merchant_id, time_us) of a remembered transaction."""
        return self.txn_index.get(transaction_id)

    def _forget(self, cutoff: int) -> None:
        index = self.txn_index
        while index:
            oldest = next(iter(index))  # dicts keep insertion (= time) order
            if index[oldest][1] > cutoff:
                break
            del index[oldest]


@dataclass
class MerchantFeatures:
    """Merchants' state; emits every merchant's snapshot at each 00:00 UTC the clock passes."""

    sink: Sink = _no_sink
    merchants: dict[str, MerchantState] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # transaction id -> time_us (dedup)
    day: int | None = None  # the latest day whose 00:00 snapshots were emitted
    late_beyond_correction: int = 0
    unmatched_labels: int = 0
    duplicates: int = 0

    def advance_to(self, time_us: int) -> None:
        """Emit the 00:00 UTC snapshots of every day that starts at or before ``time_us``."""
        day = time_us // DAY
        if self.day is None:
            # Start one day back: its 00:00 has no merchant state yet, so nothing is emitted,
            # and any event (even a late one) is then "after the latest emitted midnight".
            self.day = day - 1
        while self.day < day:
            self.day += 1
            day_start = self.day * DAY
            for merchant_id in sorted(self.merchants):
                state = self.merchants[merchant_id]
                state.forget_before(day_start)
                # Emitted even when nothing is left in any window: a merchant is never
                # forgotten, so when its rows stop cannot depend on the order events arrive
                # in (the stream's partitions run at different speeds; the backfill's don't).
                self.sink(MERCHANT_VIEW, merchant_id, day_start, merchant_snapshot(state, day_start))
            cutoff = day_start - _TXN_MEMORY
            for txn_id in [i for i, t in self.seen.items() if t <= cutoff]:
                del self.seen[txn_id]

    def add_transaction(self, transaction_id: str, merchant_id: str, time_us: int) -> bool:
        if transaction_id in self.seen:
            self.duplicates += 1
            return False
        self.seen[transaction_id] = time_us
        state = self.merchants.setdefault(merchant_id, MerchantState())
        state.add_transaction(time_us)
        self._correct(merchant_id, state, time_us)
        return True

    def add_label(
        self, transaction_id: str, merchant_id: str, txn_time_us: int, is_fraud: bool, reported_us: int
    ) -> bool:
        state = self.merchants.get(merchant_id)
        if state is None or not state.add_verdict(txn_time_us // DAY, transaction_id, reported_us, is_fraud):
            # The transaction's day has left every window: the label can change nothing.
            self.unmatched_labels += 1
            return False
        self._correct(merchant_id, state, reported_us)
        return True

    def _correct(self, merchant_id: str, state: MerchantState, event_us: int) -> None:
        """Re-emit the latest snapshot if an event it should have counted arrived after it."""
        if self.day is None or event_us >= self.day * DAY:
            return
        if event_us < self.day * DAY - LATENESS_ALLOWED:
            self.late_beyond_correction += 1  # older snapshots keep what they said
        day_start = self.day * DAY
        self.sink(MERCHANT_VIEW, merchant_id, day_start, merchant_snapshot(state, day_start))


@dataclass
class DeviceFeatures:
    """Devices' state; a snapshot after each event, re-emitted for later events a late one joins."""

    sink: Sink = _no_sink
    devices: dict[str, DeviceState] = field(default_factory=dict)
    late_beyond_correction: int = 0
    duplicates: int = 0

    def add(self, transaction_id: str, device_id: str, card_id: str, time_us: int) -> bool:
        state = self.devices.setdefault(device_id, DeviceState())
        if transaction_id in state.id_set:
            self.duplicates += 1
            return False
        latest = state.times[-1] if state.times else time_us
        if time_us < latest - LATENESS_ALLOWED:
            self.late_beyond_correction += 1
        i = state.add(time_us, card_id, transaction_id)
        # The new event's own row, then every later row whose 24 h window it falls in.
        for anchor in state.times[i:]:
            if anchor >= time_us + DEVICE_WINDOW:
                break
            self.sink(DEVICE_VIEW, device_id, anchor, device_snapshot(state, anchor))
        state.forget_until(max(latest, time_us) - DEVICE_WINDOW - LATENESS_ALLOWED)
        return True


@dataclass
class EngineCounts:
    transactions: int = 0
    duplicate_transactions: int = 0
    labels: int = 0
    unmatched_labels: int = 0


class FeatureEngine:
    """All three parts in one process, fed in time order (batch backfill, tests)."""

    def __init__(self, sink: Sink | None = None) -> None:
        self.sink = sink
        self.latest: dict[str, dict[str, Snapshot]] = {CARD_VIEW: {}, MERCHANT_VIEW: {}, DEVICE_VIEW: {}}
        self.counts = EngineCounts()
        self.cards = CardFeatures(sink=self._emit)
        self.merchants = MerchantFeatures(sink=self._emit)
        self.devices = DeviceFeatures(sink=self._emit)

    def _emit(self, view: str, entity_id: str, time_us: int, snapshot: Snapshot) -> None:
        self.latest[view][entity_id] = snapshot
        if self.sink is not None:
            self.sink(view, entity_id, time_us, snapshot)

    def advance_to(self, time_us: int) -> None:
        self.merchants.advance_to(time_us)

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
        self.advance_to(txn.time_us)
        if not self.cards.add(txn):
            self.counts.duplicate_transactions += 1
            return False
        self.counts.transactions += 1
        self.merchants.add_transaction(txn.transaction_id, txn.merchant_id, txn.time_us)
        if txn.device_id:
            self.devices.add(txn.transaction_id, txn.device_id, txn.card_id, txn.time_us)
        return True

    def add_label(self, transaction_id: str, is_fraud: bool, reported_us: int) -> bool:
        """Fold a label in at its report time; False if its transaction is unknown or too old."""
        self.advance_to(reported_us)
        self.counts.labels += 1
        placed = self.cards.merchant_of(transaction_id)
        if placed is None or not self.merchants.add_label(transaction_id, *placed, is_fraud, reported_us):
            self.counts.unmatched_labels += 1
            return False
        return True
