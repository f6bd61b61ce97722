"""One score request, start to finish: features → rules → model → decision → prediction log.

Every path ends in a decision. What decided is `served_by`:

* ``champion`` / ``canary`` — the model, with the store's features;
* ``fallback`` — degraded: the store did not answer in time (the model scores request-time
  features and defaults), or no model could be used (rules only);
* ``kill_switch`` — an operator turned the models off: rules only.

The reason of every degradation is in `reasons` and in `fraud_fallbacks_total{reason}`.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.events import Transaction
from core.features import MODEL_FEATURES, Txn, fresh_snapshots, model_vector
from models.costs import APPROVE, decide
from monitoring.metrics import ScoringMetrics
from services.scoring.features import FeatureClient
from services.scoring.models import ModelHolder, ServingModel
from services.scoring.prediction_log import PredictionLog
from services.scoring.rules import Rules, stricter

log = logging.getLogger(__name__)

CHAMPION, CANARY, FALLBACK, KILL_SWITCH = "champion", "canary", "fallback", "kill_switch"
ENTITIES = ("card", "merchant", "device")


@dataclass
class Controls:
    """What operators change at run time (`/admin/*`); starts from the settings."""

    canary_percent: float
    kill_switch: bool


def in_canary(card_id: str, percent: float) -> bool:
    """Sticky by card: a card's hash bucket (0–9999) decides, the same on every request."""
    return zlib.crc32(card_id.encode()) % 10_000 < percent * 100


@dataclass(frozen=True)
class Decision:
    transaction_id: str
    score: float
    decision: str
    reasons: list[str]
    model_version: str | None
    served_by: str
    stored_features: list[str]  # entities whose stored features were found and fresh
    latency_ms: float


class Scorer:
    def __init__(
        self,
        features: FeatureClient,
        rules: Rules,
        models: ModelHolder,
        prediction_log: PredictionLog | None,
        controls: Controls,
        metrics: ScoringMetrics,
    ) -> None:
        self.features = features
        self.rules = rules
        self.models = models
        self.prediction_log = prediction_log
        self.controls = controls
        self.metrics = metrics

    async def score(self, txn: Transaction) -> Decision:
        start = time.perf_counter()
        models = self.models.current  # read once: this request uses one model set throughout
        event = Txn.of(txn)
        lookup = await self.features.lookup(txn.card_id, txn.merchant_id, txn.device_id)
        snapshots = lookup.snapshots or {}
        # What the model may see: a snapshot from after the transaction or past its TTL is absent.
        fresh = fresh_snapshots(
            event.time_us, snapshots.get("card"), snapshots.get("merchant"), snapshots.get("device")
        )
        stored = [entity for entity, snapshot in zip(ENTITIES, fresh, strict=True) if snapshot is not None]
        vector = np.asarray(model_vector(event, *fresh), dtype=np.float32)
        features = dict(zip(MODEL_FEATURES, vector.tolist(), strict=True))
        after_features = time.perf_counter()
        rules = self.rules.evaluate(txn, event.time_us, snapshots.get("card"), features)
        after_rules = time.perf_counter()

        reasons: list[str] = []
        degraded: list[str] = []
        if lookup.degraded:
            degraded.append(f"features_{lookup.outcome}")
            reasons.append(
                f"feature store {lookup.outcome.replace('_', ' ')}: scored with request-time features"
            )
        model: ServingModel | None = None
        served_by = CHAMPION
        if self.controls.kill_switch:
            served_by = KILL_SWITCH
        elif models.champion is None:
            degraded.append("no_model")
            reasons.append("no model loaded: rules only")
        elif models.challenger is not None and in_canary(txn.card_id, self.controls.canary_percent):
            model, served_by = models.challenger, CANARY
        else:
            model = models.champion

        score, decision = rules.score, rules.rules_only_decision()
        if model is not None:
            try:
                model_score = model.score(vector)
                banded = str(decide(np.array([model_score]), model.scorer.thresholds)[0])
                model_decision = stricter(rules.floor, banded)
                # What a reviewer reads; approvals (~97%) skip the ~30-row occlusion batch.
                explained = model.explain(vector) if model_decision != APPROVE else []
            except Exception as error:  # a model that cannot run must not fail the request
                log.error("model %s failed: %s", model.version, error)
                degraded.append("model_error")
                reasons.append("model failed: rules only")
                model = None
            else:
                score, decision = model_score, model_decision
                reasons += explained
        if served_by != KILL_SWITCH and (model is None or degraded):
            served_by = FALLBACK
        if served_by == KILL_SWITCH:
            reasons.append("kill switch on: rules only")
        reasons = rules.hits + reasons
        end = time.perf_counter()

        self._observe(start, after_features, after_rules, end, decision, served_by, score, degraded, stored)
        latency = {
            "total": (end - start) * 1e3,
            "features": (after_features - start) * 1e3,
            "rules": (after_rules - after_features) * 1e3,
            "model": (end - after_rules) * 1e3,
        }
        if self.prediction_log is not None:
            self._log(
                txn,
                features,
                score,
                decision,
                served_by,
                model,
                models.champion,
                models.challenger,
                rules.hits,
                latency,
            )
        return Decision(
            transaction_id=txn.transaction_id,
            score=score,
            decision=decision,
            reasons=reasons,
            model_version=model.version if model else None,
            served_by=served_by,
            stored_features=stored,
            latency_ms=round(latency["total"], 3),
        )

    def _observe(
        self,
        start: float,
        after_features: float,
        after_rules: float,
        end: float,
        decision: str,
        served_by: str,
        score: float,
        degraded: list[str],
        stored: list[str],
    ) -> None:
        m = self.metrics
        m.stage_seconds.labels("features").observe(after_features - start)
        m.stage_seconds.labels("rules").observe(after_rules - after_features)
        m.stage_seconds.labels("model").observe(end - after_rules)
        m.decisions.labels(decision, served_by).inc()
        m.scores.observe(score)
        for reason in degraded:
            m.fallbacks.labels(reason).inc()
        for entity in stored:
            m.stored_features.labels(entity).inc()

    def _log(
        self,
        txn: Transaction,
        features: dict[str, float],
        score: float,
        decision: str,
        served_by: str,
        model: ServingModel | None,
        champion: ServingModel | None,
        challenger: ServingModel | None,
        rule_hits: list[str],
        latency: dict[str, float],
    ) -> None:
        record: dict[str, Any] = {
            "transaction_id": txn.transaction_id,
            "card_id": txn.card_id,
            "merchant_id": txn.merchant_id,
            "device_id": txn.device_id,
            "amount": txn.amount,
            "channel": txn.channel,
            "merchant_country": txn.merchant_country,
            "ip_country": txn.ip_country,
            "event_time": txn.event_time.isoformat(),
            "scored_at": datetime.now(UTC).isoformat(),
            "score": score,
            "decision": decision,
            "served_by": served_by,
            "model_version": model.version if model else None,
            "challenger_version": None,
            "challenger_score": None,
            "champion_version": None,
            "champion_score": None,
            "rule_hits": rule_hits,
            "features": features,
            "latency_ms": latency,
        }
        # Shadow: the other arm scores the same vector in the writer process. On a champion row
        # that is the challenger; on a canary row the champion, so the guard can pair them.
        shadow = None
        if served_by == CANARY and model is not None:
            record["challenger_version"], record["challenger_score"] = model.version, score
            shadow = champion.version if champion is not None else None
        elif challenger is not None and challenger is not model:
            shadow = challenger.version
        assert self.prediction_log is not None
        self.prediction_log.submit(record, shadow)
