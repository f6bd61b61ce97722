"""Every metric of the system, in one place, named `fraud_<what>_<unit>`: the scoring
service's (`ScoringMetrics`), the stream processor's (`StreamMetrics`) and the monitor's
(`MonitorMetrics`).

Each service or processor instance owns a `CollectorRegistry` (not the process-wide default), so tests
can build several apps in one process and scrape each one's `/metrics` on its own.
Labels are few and bounded: decision (3), served_by (4), stage (3), fallback reason (a
handful), feature (the model's features and "score"); never a card or a transaction id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.features import MODEL_FEATURES

# Fine around the 10 ms SLO: a p99 of 8 ms and one of 12 ms must land in different buckets.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.006,
    0.007,
    0.008,
    0.009,
    0.010,
    0.0125,
    0.015,
    0.020,
    0.030,
    0.050,
    0.100,
    0.250,
    1.0,
)
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.010, 0.025, 0.1)
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
# Label values known in advance get their series at start (prometheus-client's advice), so a
# dashboard panel or a rate() reads 0 rather than nothing before the first event.
DECISIONS = ("approve", "review", "decline")
SERVED_BY = ("champion", "canary", "fallback", "kill_switch")  # the only values of served_by
FEATURE_LOOKUP_OUTCOMES = ("ok", "slow", "timeout", "error", "breaker_open", "unavailable")
# A lookup outcome without features becomes the fallback reason features_<outcome>.
FALLBACK_REASONS = (
    *(f"features_{o}" for o in FEATURE_LOOKUP_OUTCOMES if o not in ("ok", "slow")),
    "no_model",
    "model_error",
)


class ScoringMetrics:
    """The scoring service's metrics; `registry` is what `/metrics` exposes."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "fraud_score_request_duration_seconds",
            "POST /v1/score, from request parsed to response ready.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "fraud_score_stage_duration_seconds",
            "Time of one stage of a score request.",
            ["stage"],  # features | rules | model
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.decisions = Counter(
            "fraud_decisions",
            "Decisions by band and by what decided.",
            ["decision", "served_by"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "fraud_fallbacks",
            "Requests served in a degraded mode, by reason.",
            ["reason"],
            registry=registry,
        )
        self.feature_lookups = Counter(
            "fraud_feature_lookups",
            "Online feature lookups by outcome (ok, slow, timeout, error, breaker_open, unavailable);"
            " slow: read in full but past the budget, used (not a fallback).",
            ["outcome"],
            registry=registry,
        )
        self.stored_features = Counter(
            "fraud_score_stored_features",
            "Score requests whose entity had stored features, found and fresh (within the view's"
            " TTL, not after the transaction). Divided by the request count: the share scored"
            " with history; a stale online store shows here first.",
            ["entity"],  # card | merchant | device
            registry=registry,
        )
        self.feature_read_seconds = Histogram(
            "fraud_feature_read_duration_seconds",
            "Online read time on the reader thread (the store's share of the features stage).",
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.breaker_state = Gauge(
            "fraud_feature_breaker_state",
            "Feature-store circuit breaker: 0 closed, 1 half-open, 2 open.",
            registry=registry,
        )
        self.scores = Histogram(
            "fraud_score", "Calibrated scores returned.", buckets=SCORE_BUCKETS, registry=registry
        )
        self.invalid_requests = Counter(
            "fraud_invalid_requests", "Requests refused with a 4xx, by status.", ["status"], registry=registry
        )
        self.model_info = Info("fraud_model", "Versions being served.", registry=registry)
        self.model_reloads = Counter(
            "fraud_model_reloads", "Model reloads by outcome.", ["outcome"], registry=registry
        )
        for decision in DECISIONS:
            for served_by in SERVED_BY:
                self.decisions.labels(decision, served_by)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        for outcome in FEATURE_LOOKUP_OUTCOMES:
            self.feature_lookups.labels(outcome)
        for entity in ("card", "merchant", "device"):
            self.stored_features.labels(entity)
        for stage in ("features", "rules", "model"):
            self.stage_seconds.labels(stage)
        self.invalid_requests.labels("422")
        for outcome in ("ok", "failed"):
            self.model_reloads.labels(outcome)

    def set_breaker(self, state: str) -> None:
        self.breaker_state.set(BREAKER_STATES[state])


class PredictionLogCollector(Collector):
    """The prediction log's counts, read at scrape time (the writer process keeps them)."""

    def __init__(self, counts: Callable[[], dict[str, float]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        records = CounterMetricFamily(
            "fraud_prediction_log_records",
            "Prediction records by outcome: sent, spooled, replayed, dropped.",
            labels=["outcome"],
        )
        for outcome in ("sent", "spooled", "replayed", "dropped"):
            records.add_metric([outcome], counts[outcome])
        yield records
        yield GaugeMetricFamily(
            "fraud_prediction_log_spool_records",
            "Prediction records waiting on disk for the broker.",
            value=counts["spool_records"],
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_spool_bytes", "Disk used by the spool.", value=counts["spool_bytes"]
        )
        yield GaugeMetricFamily(
            "fraud_prediction_log_pending_records",
            "Records in the service, not yet handed to the writer process.",
            value=counts["pending"],
        )


# (kind, outcome) of fraud_stream_events_total: kind is the source topic.
STREAM_OUTCOMES = (
    ("transactions", "applied"),
    ("transactions", "duplicate"),
    ("transactions", "dead_lettered"),
    ("labels", "routed"),
    ("labels", "dead_lettered"),
)
# Fine buckets below a second: the freshness SLO is p99 ≤ 1 s.
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)


class StreamMetrics:
    """The processor's Prometheus metrics, in a registry of its own (two processors, one test)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "fraud_stream_messages_consumed", "Records consumed, by topic.", ["topic"], registry=r
        )
        self.outcomes = Counter(
            "fraud_stream_events",
            "What became of each consumed transaction or label.",
            ["kind", "outcome"],
            registry=r,
        )
        self.rows_written = Counter(
            "fraud_stream_feature_rows_written",
            "Feature rows written, by view and store.",
            ["view", "store"],
            registry=r,
        )
        self.online_write_seconds = Histogram(
            "fraud_stream_online_write_seconds",
            "Time to write one micro-batch's feature rows to the online store.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.freshness = Histogram(
            "fraud_stream_feature_freshness_seconds",
            "From a transaction's publish time to its features being readable online.",
            ["view"],
            buckets=_FRESHNESS_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "fraud_stream_consumer_lag",
            "Records behind the partition's end.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned = Gauge("fraud_stream_assigned_partitions", "Partitions owned now.", registry=r)
        for kind, outcome in STREAM_OUTCOMES:
            self.outcomes.labels(kind, outcome)


DRIFT_FEATURES = frozenset([*MODEL_FEATURES, "score"])  # the only values of the feature label
DRIFT_WINDOW_OUTCOMES = ("clean", "drifted", "skipped")
# The canary guard's checks (monitoring/canary.py), in report order: the only values of the
# check label, and of the rollback reason (a rollback is counted under its first failing check).
CANARY_CHECKS = (
    "errors",
    "latency",
    "review_rate",
    "decline_rate",
    "rank_correlation",
    "flip_rate",
    "score_ks",
    "precision",
    "cost",
)
CANARY_VERDICTS = ("pending", "pass", "marginal", "fail")


class MonitorMetrics:
    """The monitor's metrics (drift, performance), in a registry of its own.

    Drift gauges carry the value of the latest evaluated window, per feature; the model's
    score is feature="score". Feature names outside the model's list are refused, so the
    label stays bounded whatever a prediction record holds.

    Performance gauges (monitoring/performance.py) carry, per served_by, the latest decision
    day: `expected` from the calibrated scores alone (that day, possibly still running),
    `matured` from the labels of the latest matured day (30 days back by default). NaN where
    a value is undefined (no row in the band) or not measurable (a decline's precision
    without any explicit verdict).
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.drift_psi = Gauge(
            "fraud_drift_psi",
            "PSI of the latest window against the champion's reference sample (drift when above 0.2).",
            ["feature"],
            registry=r,
        )
        self.drift_ks_pvalue = Gauge(
            "fraud_drift_ks_pvalue",
            "KS p-value of the latest window against the reference sample (drift when below 0.01).",
            ["feature"],
            registry=r,
        )
        self.drift_alarm = Gauge(
            "fraud_drift_alarm",
            "1 while a feature or the score has drifted for the required windows in a row.",
            registry=r,
        )
        self.drift_window_end = Gauge(
            "fraud_drift_window_end_timestamp_seconds",
            "Event-time end of the latest window evaluated for drift.",
            registry=r,
        )
        self.drift_windows = Counter(
            "fraud_drift_windows",
            "Windows by outcome: clean, drifted (a feature or the score drifted), skipped (too few rows).",
            ["outcome"],
            registry=r,
        )
        for outcome in DRIFT_WINDOW_OUTCOMES:  # every series exists from the first scrape
            self.drift_windows.labels(outcome)
        self.records = Counter(
            "fraud_monitor_records",
            "Records the monitor consumed, by topic and outcome: kept, duplicate (a resend), invalid.",
            ["topic", "outcome"],
            registry=r,
        )
        for topic in ("predictions", "labels"):
            for outcome in ("kept", "duplicate", "invalid"):
                self.records.labels(topic, outcome)
        from monitoring.audit import ACTIONS

        self.monitor_actions = Counter(
            "fraud_monitor_actions",
            "Automatic actions of the monitor (each also in the audit trail), by action.",
            ["action"],
            registry=r,
        )
        for action in ACTIONS:
            self.monitor_actions.labels(action)
        self.lag = Gauge(
            "fraud_monitor_consumer_lag",
            "Records of a partition not yet consumed by the monitor.",
            ["topic", "partition"],
            registry=r,
        )

        self.expected_precision = Gauge(
            "fraud_performance_expected_precision",
            "Precision of a band expected from the calibrated scores (mean score of its rows), latest day.",
            ["band", "served_by"],
            registry=r,
        )
        self.expected_recall = Gauge(
            "fraud_performance_expected_recall",
            "Share of the expected fraud (score mass) in review + decline, latest day. Blind to"
            " concept drift: a new fraud pattern the model scores low leaves it unchanged.",
            ["served_by"],
            registry=r,
        )
        self.expected_day = Gauge(
            "fraud_performance_expected_day_timestamp_seconds",
            "Start (UTC) of the decision day the expected performance is for.",
            ["served_by"],
            registry=r,
        )
        self.matured_precision = Gauge(
            "fraud_performance_matured_precision",
            "Realised precision of a band on the latest matured decision day (decline: among"
            " declines with an explicit verdict, NaN without one; chargebacks never come for a decline).",
            ["band", "served_by"],
            registry=r,
        )
        self.matured_recall = Gauge(
            "fraud_performance_matured_recall",
            "Realised recall of review over approved + reviewed fraud, latest matured decision day.",
            ["served_by"],
            registry=r,
        )
        self.matured_day = Gauge(
            "fraud_performance_matured_day_timestamp_seconds",
            "Start (UTC) of the latest matured decision day.",
            ["served_by"],
            registry=r,
        )
        self.expected_savings = Gauge(
            "fraud_performance_expected_savings",
            "Savings of review against approve-all expected from the calibrated scores, latest day"
            " (fraud amount stopped minus the reviews' cost, the version's cost model; currency units).",
            ["served_by"],
            registry=r,
        )
        self.matured_savings = Gauge(
            "fraud_performance_matured_savings",
            "Savings of review against approve-all from the labels, latest matured decision day"
            " (currency units; reads low by the labels still to come).",
            ["served_by"],
            registry=r,
        )
        self.matured_label_share = Gauge(
            "fraud_performance_matured_label_share",
            "Share of the fraud expected labelled by now on the latest matured day (label delay).",
            ["served_by"],
            registry=r,
        )

        # Training–serving skew (monitoring/skew.py): the latest check, per model feature.
        self.skew_mismatch_share = Gauge(
            "fraud_skew_mismatch_share",
            "Share of the served vectors checked whose value of the feature differs from the training"
            " path's (exact in float32), a stale online store included; NaN: not compared.",
            ["feature"],
            registry=r,
        )
        self.skew_stale_share = Gauge(
            "fraud_skew_stale_share",
            "Part of fraud_skew_mismatch_share a stale online store explains (the served value is the"
            " training path's as of an earlier event of the entity).",
            ["feature"],
            registry=r,
        )
        self.skew_max_abs_difference = Gauge(
            "fraud_skew_max_abs_difference",
            "Largest |served - training path| of the feature in the latest check.",
            ["feature"],
            registry=r,
        )
        self.skew_rows_checked = Counter(
            "fraud_skew_rows_checked", "Served vectors recomputed offline and compared.", registry=r
        )

        # Canary guard and rollback (monitoring/canary.py, monitoring/rollback.py).
        self.canary_percent = Gauge(
            "fraud_canary_percent",
            "Share of cards (%) the challenger decides, as the guard last set or saw it.",
            registry=r,
        )
        self.canary_verdict = Gauge(
            "fraud_canary_verdict",
            "1 on the guard's latest verdict, 0 on the others; all 0 while nothing is under evaluation.",
            ["verdict"],
            registry=r,
        )
        self.canary_check_failures = Counter(
            "fraud_canary_check_failures",
            "Guard evaluations (canary, shadow or a new champion's watch) in which a check failed.",
            ["check"],
            registry=r,
        )
        self.rollbacks = Counter(
            "fraud_rollbacks",
            "Automatic rollbacks of the champion, by the first failing check.",
            ["reason"],
            registry=r,
        )
        for verdict in CANARY_VERDICTS:
            self.canary_verdict.labels(verdict)
        for check in CANARY_CHECKS:
            self.canary_check_failures.labels(check)
            self.rollbacks.labels(check)

    @staticmethod
    def _check_served_by(served_by: str) -> None:
        if served_by not in SERVED_BY:
            raise ValueError(f"{served_by!r} is not one of {', '.join(SERVED_BY)}: not a served_by label")

    def set_expected_performance(
        self,
        served_by: str,
        day: datetime,
        precision_review: float,
        precision_decline: float,
        recall: float,
        savings: float = float("nan"),
    ) -> None:
        self._check_served_by(served_by)
        self.expected_precision.labels("review", served_by).set(precision_review)
        self.expected_precision.labels("decline", served_by).set(precision_decline)
        self.expected_recall.labels(served_by).set(recall)
        self.expected_savings.labels(served_by).set(savings)
        self.expected_day.labels(served_by).set(day.timestamp())

    def set_matured_performance(
        self,
        served_by: str,
        day: datetime,
        precision_review: float,
        precision_decline: float,
        recall_review: float,
        label_share: float,
        savings: float = float("nan"),
    ) -> None:
        self._check_served_by(served_by)
        self.matured_savings.labels(served_by).set(savings)
        self.matured_precision.labels("review", served_by).set(precision_review)
        self.matured_precision.labels("decline", served_by).set(precision_decline)
        self.matured_recall.labels(served_by).set(recall_review)
        self.matured_day.labels(served_by).set(day.timestamp())
        self.matured_label_share.labels(served_by).set(label_share)

    def set_drift(self, feature: str, psi: float, ks_pvalue: float) -> None:
        if feature not in DRIFT_FEATURES:
            raise ValueError(f"{feature!r} is not a model feature nor the score: not a drift label")
        self.drift_psi.labels(feature).set(psi)
        self.drift_ks_pvalue.labels(feature).set(ks_pvalue)

    def set_skew(
        self, feature: str, mismatch_share: float, stale_share: float, max_abs_difference: float
    ) -> None:
        if feature not in MODEL_FEATURES:
            raise ValueError(f"{feature!r} is not a model feature: not a skew label")
        self.skew_mismatch_share.labels(feature).set(mismatch_share)
        self.skew_stale_share.labels(feature).set(stale_share)
        self.skew_max_abs_difference.labels(feature).set(max_abs_difference)

    def set_canary(self, percent: float, verdict: str | None) -> None:
        """The share and the latest verdict (None: nothing under evaluation)."""
        if verdict is not None and verdict not in CANARY_VERDICTS:
            raise ValueError(f"{verdict!r} is not one of {', '.join(CANARY_VERDICTS)}")
        self.canary_percent.set(percent)
        for value in CANARY_VERDICTS:
            self.canary_verdict.labels(value).set(1 if value == verdict else 0)

    def count_check_failure(self, check: str) -> None:
        if check not in CANARY_CHECKS:
            raise ValueError(f"{check!r} is not a guard check: {', '.join(CANARY_CHECKS)}")
        self.canary_check_failures.labels(check).inc()

    def count_rollback(self, reason: str) -> None:
        if reason not in CANARY_CHECKS:
            raise ValueError(f"{reason!r} is not a guard check: {', '.join(CANARY_CHECKS)}")
        self.rollbacks.labels(reason).inc()
