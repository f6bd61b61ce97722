"""Score transactions through the service while `fraudctl stream` keeps its store fresh.

The harness of the stream-fed skew test (`tests/integration/test_scoring_skew_stream.py`)
and of the benchmark that measures that skew (`benchmarks/bench_stream_skew.py`). Every
part is real and in its own process, as in production: the broker (Tansu), the stream
processor (`fraudctl stream`), the scoring service (`fraudctl serve`, with its prediction
writer), and the gateway (`pipelines.replay`, in the caller's process).

1. the history, every transaction up to a cut and the labels reported by then, is
   published unscored as fast as the replay can; the processor, started next on an empty
   Feast store, folds it and writes it online: the serving store is stream-fed from the
   data's first day. (A backfilled store would not do: the processor's state is a fold of
   the topics, its own internal topics included, so a processor that has not read the
   history would overwrite each backfilled row with the state of a card that starts at
   the cut);
2. once the processor has caught up, the phases: slices of the transactions after the cut,
   each scored at the service before it is published (`replay(..., score_url=...)`, the
   payment gateway), at the phase's pace; the processor catches up after each;
3. the vector each transaction was scored with is its `predictions` record's `features`.

A transaction is scored before the processor can have seen it (DESIGN.md section 1), so
its vector equals training's exactly when the processor had written the earlier
transactions of its card and of its device by then: when the processor's freshness
(publish → written online, which it measures) is shorter than the gap between them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from kafka import KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from core.dataset import read_transactions
from core.events import LABELS_TOPIC, PREDICTIONS_TOPIC, TRANSACTIONS_TOPIC
from core.feature_engine import CARD_VIEW, DEVICE_VIEW
from core.features import MODEL_FEATURES
from core.settings import Settings
from pipelines.replay import ReplaySummary, replay
from pipelines.stream_tasks import LABELS_BY_CARD_TOPIC

# Which stored state each model feature comes from. The two "foreign" flags are computed
# from the request and the card's home country, which is card state.
REQUEST_ONLY = ["amount_log", "hour_of_day", "is_weekend", "channel_is_ecommerce", "has_device"]
MERCHANT_FED = [f for f in MODEL_FEATURES if f.startswith("merchant_txn") or f.startswith("merchant_fraud")]
DEVICE_FED = [f for f in MODEL_FEATURES if f.startswith("device_")]
CARD_FED = [f for f in MODEL_FEATURES if f not in {*REQUEST_ONLY, *MERCHANT_FED, *DEVICE_FED}]
FEATURE_SOURCE = (
    dict.fromkeys(REQUEST_ONLY, "request")
    | dict.fromkeys(CARD_FED, "card")
    | dict.fromkeys(MERCHANT_FED, "merchant")
    | dict.fromkeys(DEVICE_FED, "device")
)

# Caught up = nothing consumed or written for this long after the inputs were all consumed.
# The processor's internal hops (card task → merchant / device task) take ~0.1 s each.
QUIET_S = 1.5
FRESHNESS_METRIC = "fraud_stream_feature_freshness_seconds"


@dataclass(frozen=True)
class Phase:
    """The transactions after the previous phase (or the cut) up to `until`, scored at a pace."""

    name: str
    until: pd.Timestamp
    rps: float  # 0: as fast as the gateway can (one request at a time, as `replay --score`)


@dataclass(frozen=True)
class PhaseResult:
    phase: Phase
    scored: pd.DataFrame  # the transactions scored, in time order
    replay: ReplaySummary
    freshness_buckets: dict[str, dict[float, int]]  # view -> bucket upper bound -> samples

    def freshness_bound_seconds(self, view: str) -> float:
        """Every sample of the phase was at most this fresh (the largest occupied bucket)."""
        occupied = [bound for bound, n in self.freshness_buckets[view].items() if n > 0]
        return max(occupied, default=0.0)

    def freshness_samples(self, view: str) -> int:
        return sum(self.freshness_buckets[view].values())

    def freshness_quantile_bound_seconds(self, view: str, q: float) -> float | None:
        """The bucket bound at or below which a share `q` of the phase's samples lie."""
        total, below = self.freshness_samples(view), 0
        for bound, n in sorted(self.freshness_buckets[view].items()):
            below += n
            if total and below >= q * total:
                return bound
        return None


@dataclass(frozen=True)
class StreamFedRun:
    cut: pd.Timestamp  # event time of the last transaction of the history
    history: ReplaySummary
    phases: list[PhaseResult]
    predictions: dict[str, dict[str, Any]]  # transaction_id -> `predictions` record
    processor: dict[str, Any]  # `fraudctl stream --json` summary at exit
    seconds: dict[str, float]  # wall time of each step, in order


def run(data_dir: Path, settings: Settings, cut: pd.Timestamp, phases: list[Phase]) -> StreamFedRun:
    """The whole scenario on `settings`' broker, Feast project and var_dir (all fresh).

    Args:
        data_dir: The dataset (transactions in time order, labels).
        settings: A running broker's settings (`EmbeddedBroker.settings`), an unused Feast
            project and var_dir, the registry to serve, and the service's own settings
            (`feature_timeout_ms`, `admin_token`, ...), which `fraudctl serve` receives.
        cut: The history is every transaction up to it (and the labels reported by then).
        phases: Run in order, each on the transactions after the previous one; each starts
            once the processor has caught up, so it starts from the state training saw.
    """
    from feature_repo.store import apply_definitions, open_store
    from services.serve import free_port, start_in_background

    transactions = read_transactions(data_dir)
    history_size = int((transactions["event_time"] <= cut).sum())
    cut = transactions["event_time"].iloc[history_size - 1]
    seconds: dict[str, float] = {}
    clock = _Stopwatch(seconds)
    logs = settings.var_dir / "logs"
    # Views first, so that neither the service nor the processor can open a store without them.
    apply_definitions(open_store(settings), settings)
    # The processor reads from offset 0 whenever it starts, so the history can go first, and
    # the two slow starts (the processor's and the service's imports) overlap with it.
    history = replay(data_dir, settings, limit=history_size, labels_after_end=False)
    _check(history)
    with stream_processor(settings, logs / "stream.log") as processor:
        port = free_port()
        service = start_in_background(settings, port, logs / "serve.log")
        try:
            clock.lap("start")
            processor.wait_caught_up(history.transactions, history.labels)
            clock.lap("history")
            results, after = [], cut
            for phase in phases:
                before = processor.freshness_buckets()
                times = transactions["event_time"]
                chosen = transactions[(times > after) & (times <= phase.until)].reset_index(drop=True)
                summary = replay(
                    data_dir,
                    settings,
                    rps=phase.rps,
                    limit=len(chosen),
                    labels_after_end=False,
                    score_url=f"http://127.0.0.1:{port}",
                    after=after,
                )
                _check(summary)
                assert summary.transactions == len(chosen), (summary.transactions, len(chosen))
                if summary.score_errors:
                    raise RuntimeError(f"phase {phase.name}: scoring errors {summary.score_errors}")
                processor.wait_caught_up(summary.transactions, summary.labels)
                freshness = _subtract(processor.freshness_buckets(), before)
                results.append(PhaseResult(phase, chosen, summary, freshness))
                # Not `until`: the labels reported between the last transaction and `until`
                # were not published (a replay publishes those due by its last transaction).
                after = chosen["event_time"].iloc[-1]
                clock.lap(phase.name)
            ids = {tid for result in results for tid in result.scored["transaction_id"]}
            predictions = read_predictions(settings, ids)
            clock.lap("predictions")
        finally:
            service.terminate()
            service.wait(30)
    if any(settings.spool_dir.glob("*.jsonl")):
        raise RuntimeError("the service spooled predictions instead of sending them")
    clock.lap("stop")
    return StreamFedRun(cut, history, results, predictions, processor.summary, seconds)


def _check(summary: ReplaySummary) -> None:
    if summary.failed:
        raise RuntimeError(f"replay: {summary.failed} sends failed ({summary.first_error})")


class _Stopwatch:
    def __init__(self, laps: dict[str, float]) -> None:
        self.laps, self.last = laps, time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name], self.last = round(now - self.last, 2), now


# --- the processor, `fraudctl stream` in its own process ------------------------------------
class StreamProcess:
    """A running `fraudctl stream`, watched through its /metrics."""

    def __init__(self, process: subprocess.Popen[str], log_path: Path, start_timeout_s: float) -> None:
        self.process = process
        self.log_path = log_path
        self.start_deadline = time.monotonic() + start_timeout_s
        self.metrics_url: str | None = None
        self.summary: dict[str, Any] = {}  # `--json` at exit
        self.expected = {TRANSACTIONS_TOPIC: 0, LABELS_TOPIC: 0}  # published so far

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the stream processor exited: {self.log_path.read_text()[-2000:]}")

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Metric samples by name, then by their labels."""
        while self.metrics_url is None:  # it prints the port once its imports are done
            self._alive()
            found = re.search(r"metrics on (http://\S+/metrics)", self.log_path.read_text())
            if found:
                self.metrics_url = found.group(1)
            elif time.monotonic() > self.start_deadline:
                raise RuntimeError(f"the stream processor did not start: {self.log_path.read_text()[-2000:]}")
            else:
                time.sleep(0.2)
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(httpx.get(self.metrics_url, timeout=5).text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def freshness_buckets(self) -> dict[str, dict[float, int]]:
        """Freshness samples so far, per view, per bucket (not cumulative)."""
        cumulative: dict[str, dict[float, float]] = {CARD_VIEW: {}, DEVICE_VIEW: {}}
        for labels, value in self.metrics().get(f"{FRESHNESS_METRIC}_bucket", {}).items():
            named = dict(labels)
            cumulative.setdefault(named["view"], {})[float(named["le"])] = value
        buckets: dict[str, dict[float, int]] = {}
        for view, counts in cumulative.items():
            below, buckets[view] = 0.0, {}
            for bound in sorted(counts):
                buckets[view][bound] = int(counts[bound] - below)
                below = counts[bound]
        return buckets

    def wait_caught_up(self, transactions: int, labels: int, timeout_s: float = 180) -> None:
        """Until the processor consumed what was published since the last call, then went quiet.

        Transactions and labels (and the labels' re-keyed copies) are counted exactly; the
        internal records they cause cannot be counted from outside, so QUIET_S without a
        record consumed or a row written stands in for "the last hop is done".
        """
        self.expected[TRANSACTIONS_TOPIC] += transactions
        self.expected[LABELS_TOPIC] += labels
        wanted = self.expected | {LABELS_BY_CARD_TOPIC: self.expected[LABELS_TOPIC]}
        deadline = time.monotonic() + timeout_s
        previous, quiet_since = None, time.monotonic()
        while True:
            self._alive()
            samples = self.metrics()
            consumed = {
                dict(k)["topic"]: v
                for k, v in samples.get("fraud_stream_messages_consumed_total", {}).items()
            }
            progress = (consumed, samples.get("fraud_stream_feature_rows_written_total", {}))
            if progress != previous:
                previous, quiet_since = progress, time.monotonic()
            elif all(consumed.get(t, 0) >= n for t, n in wanted.items()):
                if time.monotonic() - quiet_since >= QUIET_S:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stream processor did not catch up: consumed {consumed} of {wanted}")
            time.sleep(0.1)


@contextmanager
def stream_processor(
    settings: Settings, log_path: Path, start_timeout_s: float = 120
) -> Iterator[StreamProcess]:
    """`fraudctl stream` on `settings`, started now; at exit SIGTERM, and its summary kept."""
    env = os.environ | {
        "FRAUD_VAR_DIR": str(settings.var_dir),
        "FRAUD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "FRAUD_FEAST_PROJECT": settings.feast_project,
    }
    fraudctl = str(Path(sys.executable).parent / "fraudctl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [fraudctl, "stream", "--metrics-port", "0", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        running = StreamProcess(process, log_path, start_timeout_s)
        yield running
        process.send_signal(signal.SIGTERM)  # finishes its batch, commits, prints the summary
        stdout, _ = process.communicate(timeout=60)
        if process.returncode != 0:
            raise RuntimeError(
                f"the stream processor exited {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        running.summary = json.loads(stdout.strip().splitlines()[-1])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _subtract(
    after: dict[str, dict[float, int]], before: dict[str, dict[float, int]]
) -> dict[str, dict[float, int]]:
    return {
        view: {bound: n - before.get(view, {}).get(bound, 0) for bound, n in buckets.items()}
        for view, buckets in after.items()
    }


# --- what was scored, against what training used ---------------------------------------------
def read_predictions(settings: Settings, expected: set[str], timeout_s: float = 60) -> dict[str, Any]:
    """The `predictions` records of `expected` transactions (waits for all, then 0.5 s more).

    Raises AssertionError if a transaction was logged twice or a record's key is not its id.
    """
    reader = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    found: dict[str, dict[str, Any]] = {}
    duplicates = 0
    try:
        partitions = [
            TopicPartition(PREDICTIONS_TOPIC, p)
            for p in sorted(reader.partitions_for_topic(PREDICTIONS_TOPIC) or ())
        ]
        reader.assign(partitions)
        reader.seek_to_beginning(*partitions)
        deadline, grace_end = time.monotonic() + timeout_s, None
        while time.monotonic() < (grace_end or deadline):
            for batch in reader.poll(timeout_ms=100).values():
                for record in batch:
                    value = json.loads(record.value)
                    assert record.key == value["transaction_id"].encode()
                    duplicates += value["transaction_id"] in found
                    found[value["transaction_id"]] = value
            if grace_end is None and expected <= found.keys():
                grace_end = time.monotonic() + 0.5
    finally:
        reader.close()
    assert duplicates == 0, f"{duplicates} transactions logged twice"
    return found


def vector_mismatches(
    predictions: dict[str, dict[str, Any]], training: pd.DataFrame, ids: list[str]
) -> pd.DataFrame:
    """True where the scored value differs from training's: rows `ids`, columns MODEL_FEATURES.

    The models see float32 on both sides: training feeds its float64 frame cast to float32,
    and the service casts `model_vector` to float32 and logs that very array (JSON carries a
    float32 value exactly). So the comparison is exact in the precision the model receives;
    a tolerance would only hide a real difference.
    """
    served = np.array([[predictions[t]["features"][f] for f in MODEL_FEATURES] for t in ids])
    trained = training.loc[ids, MODEL_FEATURES].to_numpy(dtype=np.float64)
    expected = trained.astype(np.float32).astype(np.float64)
    return pd.DataFrame(served != expected, index=ids, columns=MODEL_FEATURES)


def mismatch_sources(mismatch: pd.DataFrame) -> pd.DataFrame:
    """True where a transaction has a differing feature from that source (FEATURE_SOURCE)."""
    return mismatch.T.groupby(pd.Series(FEATURE_SOURCE)).any().T


def describe_mismatches(
    mismatch: pd.DataFrame, predictions: dict[str, dict[str, Any]], training: pd.DataFrame, limit: int = 20
) -> str:
    """How many transactions differ in each feature, then the first differing values, one line
    each: id, feature (source), served, training."""
    counts = mismatch.sum()
    lines = ["transactions differing, by feature: " + str(counts[counts > 0].to_dict())]
    for tid, row in mismatch.iterrows():
        for feature in row.index[row.to_numpy()]:
            served, trained = predictions[str(tid)]["features"][feature], training.at[tid, feature]
            lines.append(
                f"{tid} {feature} ({FEATURE_SOURCE[feature]}): served {served!r}, training {trained!r}"
            )
    shown, hidden = lines[: limit + 1], len(lines) - 1 - limit
    return "\n".join(shown) + (f"\n… {hidden} more" if hidden > 0 else "")


def smallest_gaps(transactions: pd.DataFrame) -> dict[str, int]:
    """Fewest transactions between two of one card, and of one device, in `transactions`.

    At `rps` transactions a second, k transactions apart is k / rps seconds apart: the time
    the processor has to write the earlier one before the later one is scored.
    """
    position = pd.Series(np.arange(len(transactions)), index=transactions.index)
    gaps = {}
    for entity in ("card_id", "device_id"):
        keyed = transactions[entity].notna()
        steps = position[keyed].groupby(transactions.loc[keyed, entity]).diff().dropna()
        gaps[entity] = int(steps.min()) if len(steps) else len(transactions)
    return gaps


def seconds_since_related(transactions: pd.DataFrame, predictions: dict[str, dict[str, Any]]) -> pd.Series:
    """Per transaction: seconds since the service scored an earlier one of its card or device.

    Measured between the `scored_at` stamps of the `predictions` records; NaN for a
    transaction that is the first of its card and of its device in the slice.
    """
    stamps = transactions["transaction_id"].map(lambda tid: predictions[tid]["scored_at"])
    # ISO8601, not one format: `isoformat()` leaves out a microsecond part that is 0.
    scored_at = pd.to_datetime(stamps, utc=True, format="ISO8601")
    seconds = (scored_at - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    since = {
        entity: seconds - seconds.groupby(transactions[entity]).shift()  # NaN keys (no device) stay NaN
        for entity in ("card_id", "device_id")
    }
    return pd.DataFrame(since).min(axis=1).set_axis(transactions["transaction_id"])
