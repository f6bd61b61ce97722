"""The stream processor's tasks: one per input partition, each owning its entities' state.

Card features need a card's transactions in order: the `transactions` topic is keyed by
card, so the task of partition *i* owns the cards hashed there. Merchant and device
features need every card's transactions, so the card task forwards what they need to
two internal topics keyed by merchant and by device (a repartition, as Kafka Streams
does). Labels are keyed by transaction id; a router re-keys them by card onto a topic
co-partitioned with `transactions`, so the card task that knows the transaction's
merchant sees its label and forwards it to that merchant's task.

    transactions ──► CardTask(i) ──► stream.merchant-events ──► MerchantTask(j)
    labels ──► route ──► stream.labels-by-card ──► CardTask(i) ─┘
                                  └───────────► stream.device-events ──► DeviceTask(k)

A card task sends one envelope per downstream partition per batch: its events for that
partition plus its clock (the latest event time it has processed). The clock is what
moves a merchant task past midnight even when none of its merchants had a transaction.

Every task's state is a fold of its partitions' records in offset order, so a task
rebuilt from those records after a restart or a rebalance is the task that was lost,
and two processors splitting the partitions compute what one computes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from core.events import Label, Transaction
from core.feature_engine import CardFeatures, DeviceFeatures, MerchantFeatures, Sink
from core.features import Txn, to_us

LABELS_BY_CARD_TOPIC = "stream.labels-by-card"
MERCHANT_EVENTS_TOPIC = "stream.merchant-events"
DEVICE_EVENTS_TOPIC = "stream.device-events"
INTERNAL_TOPICS = (LABELS_BY_CARD_TOPIC, MERCHANT_EVENTS_TOPIC, DEVICE_EVENTS_TOPIC)

# (topic, partition, value): an internal record to send. Partitions come from the entity
# key through Kafka's default partitioning (murmur2), as any client would place them.
Forward = Callable[[str, int, bytes], None]
PartitionOf = Callable[[str], int]


def parse_transaction(value: bytes) -> Txn:
    """A `transactions` record as the feature logic's Txn; raises ValueError if invalid."""
    return Txn.of(Transaction.model_validate_json(value))


def parse_label(value: bytes) -> Label:
    return Label.model_validate_json(value)


@dataclass
class TaskCounts:
    """What happened to each record; consumed = the sum of the outcomes (checked in tests)."""

    transactions_applied: int = 0
    transactions_duplicate: int = 0
    labels_forwarded: int = 0
    labels_unmatched: int = 0  # no such transaction within the label window


@dataclass
class CardTask:
    """Partition *i* of `transactions` and of `stream.labels-by-card`."""

    partition: int
    sink: Sink
    merchant_partition_of: PartitionOf
    device_partition_of: PartitionOf
    features: CardFeatures = field(init=False)
    counts: TaskCounts = field(default_factory=TaskCounts)
    txn_clock: int | None = None  # the latest transaction time seen (the partition is in time order)
    clock: int | None = None  # the latest event time of any kind, sent downstream
    pending_labels: dict[str, list[Label]] = field(default_factory=dict)
    # downstream partition -> events of the batch in progress
    _merchant_out: dict[int, list[list]] = field(default_factory=dict)
    _device_out: dict[int, list[list]] = field(default_factory=dict)
    _sent_clock: int | None = None

    def __post_init__(self) -> None:
        self.features = CardFeatures(sink=self.sink)

    def _tick(self, time_us: int) -> None:
        self.clock = time_us if self.clock is None else max(self.clock, time_us)

    def on_transaction(self, txn: Txn, published_ms: int) -> bool:
        """Fold a transaction in (OutOfOrderError if older than its card's latest)."""
        if not self.features.add(txn):
            self.counts.transactions_duplicate += 1
            return False
        self.counts.transactions_applied += 1
        self.txn_clock = txn.time_us if self.txn_clock is None else max(self.txn_clock, txn.time_us)
        self._tick(txn.time_us)
        merchant_events = self._merchant_out.setdefault(self.merchant_partition_of(txn.merchant_id), [])
        merchant_events.append(["t", txn.transaction_id, txn.merchant_id, txn.time_us])
        if txn.device_id:
            device_events = self._device_out.setdefault(self.device_partition_of(txn.device_id), [])
            device_events.append([txn.transaction_id, txn.device_id, txn.card_id, txn.time_us, published_ms])
        for label in self.pending_labels.pop(txn.transaction_id, ()):
            self._forward_label(label)
        return True

    def on_label(self, label: Label) -> None:
        self._tick(to_us(label.reported_at))
        if self.features.merchant_of(label.transaction_id) is not None:
            self._forward_label(label)
        elif self.txn_clock is not None and to_us(label.reported_at) <= self.txn_clock:
            # Transactions come in time order: one made before the label would be here by now.
            self.counts.labels_unmatched += 1
        else:
            self.pending_labels.setdefault(label.transaction_id, []).append(label)

    def pending_count(self) -> int:
        return sum(len(labels) for labels in self.pending_labels.values())

    def _forward_label(self, label: Label) -> None:
        placed = self.features.merchant_of(label.transaction_id)
        assert placed is not None
        merchant_id, txn_time = placed
        events = self._merchant_out.setdefault(self.merchant_partition_of(merchant_id), [])
        events.append(
            ["l", label.transaction_id, merchant_id, txn_time, label.is_fraud, to_us(label.reported_at)]
        )
        self.counts.labels_forwarded += 1

    def expire_pending(self) -> None:
        """Labels whose transaction can no longer arrive count as unmatched."""
        if self.txn_clock is None:
            return
        for txn_id in [
            t for t, ls in self.pending_labels.items() if to_us(ls[0].reported_at) <= self.txn_clock
        ]:
            self.counts.labels_unmatched += len(self.pending_labels.pop(txn_id))

    def drain(self, forward: Forward, merchant_partitions: int, device_partitions: int) -> None:
        """Send the batch's envelopes: events per downstream partition, and a newer clock to all."""
        self.expire_pending()
        if self.clock is None:
            return
        clock_moved = self.clock != self._sent_clock
        for topic, out, n in (
            (MERCHANT_EVENTS_TOPIC, self._merchant_out, merchant_partitions),
            (DEVICE_EVENTS_TOPIC, self._device_out, device_partitions),
        ):
            for partition in range(n):
                events = out.get(partition)
                if events or clock_moved:
                    envelope = {"source": self.partition, "clock": self.clock, "events": events or []}
                    forward(topic, partition, json.dumps(envelope, separators=(",", ":")).encode())
            out.clear()
        self._sent_clock = self.clock

    def discard_output(self) -> None:
        """Drop the batch's envelopes (a rebuild replays what was already sent)."""
        self._merchant_out.clear()
        self._device_out.clear()
        self._sent_clock = self.clock


@dataclass
class MerchantTask:
    """Partition *j* of `stream.merchant-events`."""

    partition: int
    sink: Sink
    features: MerchantFeatures = field(init=False)

    def __post_init__(self) -> None:
        self.features = MerchantFeatures(sink=self.sink)

    def on_envelope(self, value: bytes) -> None:
        envelope = json.loads(value)
        merchants = self.features
        for event in envelope["events"]:
            if event[0] == "t":
                _, txn_id, merchant_id, time_us = event
                merchants.advance_to(time_us)
                merchants.add_transaction(txn_id, merchant_id, time_us)
            else:
                _, txn_id, merchant_id, txn_time, is_fraud, reported_us = event
                merchants.advance_to(reported_us)
                merchants.add_label(txn_id, merchant_id, txn_time, is_fraud, reported_us)
        merchants.advance_to(envelope["clock"])


@dataclass
class DeviceTask:
    """Partition *k* of `stream.device-events`."""

    partition: int
    sink: Sink
    features: DeviceFeatures = field(init=False)
    # (published_ms of the original transaction) for each event of the current batch
    published_ms: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features = DeviceFeatures(sink=self.sink)

    def on_envelope(self, value: bytes) -> None:
        for txn_id, device_id, card_id, time_us, published_ms in json.loads(value)["events"]:
            if self.features.add(txn_id, device_id, card_id, time_us):
                self.published_ms.append(published_ms)
