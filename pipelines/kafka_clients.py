"""The one place Kafka clients are configured (kafka-python), for both profiles.

Every stage gets its producer, consumer and admin client here, so a setting that
matters (the group timeouts Tansu needs, the producer's durability) is decided once.
Values stay bytes: JSON encoding and decoding is the caller's job (core.events), and
the dead-letter topic needs the raw bytes anyway. Keys are str on both sides.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.serializer import DefaultSerializer

from core.events import DEAD_LETTER_TOPIC, LABELS_TOPIC, PREDICTIONS_TOPIC, TRANSACTIONS_TOPIC
from core.settings import Settings
from pipelines.stream_tasks import INTERNAL_TOPICS

log = logging.getLogger(__name__)

# Topic already exists: the only create error ensure_topics accepts.
_TOPIC_ALREADY_EXISTS = 36

# Group timeouts for the embedded broker. Trap, measured with Tansu v0.6.0-510f3e2 and
# kafka-python 3.0.12: Tansu answers a JoinGroup only after about session_timeout_ms / 2
# (rounded up to a whole second), whatever the rebalance timeout. With kafka-python's
# default session timeout (45 s) a consumer waits ~23 s for its partitions; with 6 s it
# waits ~3 s, on the first join and on every rebalance. kafka-python has no separate
# rebalance_timeout_ms: it sends max_poll_interval_ms. That does not speed up the join,
# and a short one hurts: a member that misses it leaves the group mid-rebalance, and
# Tansu then loops on "SyncGroup ... failed due to coordinator rebalance" without
# ever assigning partitions. So keep it long. 6 s is also the smallest session
# timeout a stock Kafka accepts (group.min.session.timeout.ms).
_EMBEDDED_GROUP_TIMEOUTS: dict[str, Any] = {
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,  # a third of the session or less, as Kafka advises
    "max_poll_interval_ms": 30_000,
    # An idle fetch is held up to this long. At the default 500 ms, Tansu delivered a
    # record 120 ms (p50) / 260 ms (p99) after it was sent; at 100 ms, 35 / 60 ms.
    "fetch_max_wait_ms": 100,
}


DEFAULT_PORT = 9092


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the bootstrap address in time."""


def host_port(bootstrap: str) -> tuple[str, int]:
    """The first address of a bootstrap list: "h1:9092,h2:9092" -> ("h1", 9092)."""
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return (host, int(port)) if host else (first, DEFAULT_PORT)


def topic_partitions(settings: Settings) -> dict[str, int]:
    """The topics of DESIGN.md section 2 and their partition counts.

    `transactions` and `labels` are keyed by card and transaction id and carry the
    event stream, so they get `transactions_partitions` (the stream processor's
    parallelism). `predictions` has one record per scored transaction, so it gets as
    many. The dead-letter topic is a trickle read by people: one partition keeps it in
    arrival order.
    """
    n = settings.transactions_partitions
    topics = {TRANSACTIONS_TOPIC: n, LABELS_TOPIC: n, PREDICTIONS_TOPIC: n, DEAD_LETTER_TOPIC: 1}
    # The stream processor's repartition topics (pipelines.stream_tasks). labels-by-card
    # must match `transactions` (co-partitioned: partition i of both goes to one task).
    return topics | dict.fromkeys(INTERNAL_TOPICS, n)


@lru_cache(maxsize=1 << 17)
def _key_hash(serialized_key: bytes) -> int:
    return murmur2(serialized_key) & 0x7FFFFFFF


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` among `partitions`."""
    return _key_hash(key.encode()) % partitions


class CachedHashPartitioner(DefaultPartitioner):
    """Kafka's default partitioning (murmur2 of the key), with the hash cached per key.

    kafka-python computes murmur2 in pure Python on every send; card ids repeat all day,
    so caching it is free throughput. Same partition for the same key as any Kafka client.
    """

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        if partitions is None:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        ordered = sorted(partitions)
        return ordered[_key_hash(serialized_key) % len(ordered)]


def producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A producer for bytes values and str keys.

    acks="all" with idempotence (kafka-python's defaults, stated here on purpose): a
    retried batch is not written twice, and losing an authorization on failover is not
    acceptable. On one broker it costs nothing over acks=1 (measured: same ~9k msg/s,
    bounded by the Python client). linger 5 ms and 64 KiB batches trade a few ms of
    latency for fewer, fuller requests.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 64 * 1024,
        "key_serializer": DefaultSerializer(),  # str -> utf-8; bytes and None pass through
        "partitioner": CachedHashPartitioner(),
    }
    return KafkaProducer(**{**config, **overrides})


def consumer(settings: Settings, group_id: str, topics: Iterable[str], **overrides: Any) -> KafkaConsumer:
    """A group consumer subscribed to `topics`, committing only when told to.

    Auto-commit is off so that offsets are committed after the work is done (the
    stream processor commits after its online-store write). A new group starts from
    the earliest offset, so nothing published before the consumer started is missed.
    Keys arrive as str, values as bytes.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "key_deserializer": DefaultSerializer(),
    }
    if settings.profile == "embedded":
        config.update(_EMBEDDED_GROUP_TIMEOUTS)
    return KafkaConsumer(*topics, **{**config, **overrides})


def admin(settings: Settings) -> KafkaAdminClient:
    """An admin client (topics, groups, offsets); close it when done."""
    return KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)


def ensure_topics(settings: Settings) -> None:
    """Create the missing topics; safe to run any number of times.

    An existing topic is left as it is (Kafka cannot shrink partitions); if its
    partition count differs from the settings, that is logged, not fixed.
    Replication factor -1 means the broker's default: 1 on Tansu and on the compose
    Kafka, and the cluster's own choice anywhere else.
    """
    wanted = topic_partitions(settings)
    with admin(settings) as client:
        existing = set(client.list_topics())
        missing = {name: n for name, n in wanted.items() if name not in existing}
        if missing:
            specs = {name: {"num_partitions": n, "replication_factor": -1} for name, n in missing.items()}
            # raise_errors=False: another process may create the same topic meanwhile.
            result = client.create_topics(specs, raise_errors=False)
            for topic in result["topics"]:
                if topic["error_code"] not in (0, _TOPIC_ALREADY_EXISTS):
                    raise KafkaError(f"could not create topic {topic['name']}: {topic['error_message']}")
            log.info("created topics %s", ", ".join(sorted(missing)))
        client.wait_for_topics(list(wanted), timeout_ms=10_000)
        for topic in client.describe_topics(list(wanted)):
            if len(topic["partitions"]) != wanted[topic["name"]]:
                log.warning(
                    "topic %s has %d partitions, settings say %d (left unchanged)",
                    topic["name"],
                    len(topic["partitions"]),
                    wanted[topic["name"]],
                )


def wait_until_ready(bootstrap: str, timeout_s: float = 15.0) -> None:
    """Block until a broker at `bootstrap` answers a metadata request.

    Raises:
        BrokerUnavailable: nothing answered within `timeout_s` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            # A plain TCP connect first: kafka-python logs every refused connection at ERROR.
            socket.create_connection(host_port(bootstrap), timeout=min(remaining, 1.0)).close()
            # The admin client retries the bootstrap itself until its own timeout.
            with KafkaAdminClient(
                bootstrap_servers=bootstrap,
                bootstrap_timeout_ms=max(100, int(remaining * 1000)),
                request_timeout_ms=max(1_000, int(remaining * 1000)),
            ) as client:
                client.list_topics()
            return
        except (OSError, KafkaError) as error:
            last_error = error
            time.sleep(0.1)
    raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s ({last_error})")


class RebalanceNotes(ConsumerRebalanceListener):
    """Notes what changed; the loop acts on it after `poll` returns.

    kafka-python runs these callbacks on its IO thread, where a blocking consumer call
    (committed(), commit()) is refused and a long rebuild would stall heartbeats.
    """

    def __init__(self) -> None:
        self.revoked: list[TopicPartition] = []
        self.assigned: list[TopicPartition] = []

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.revoked.extend(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned.extend(assigned)
