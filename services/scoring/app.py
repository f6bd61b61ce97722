"""The FastAPI app of the scoring service: its parts, built once per process, and its routes.

`create_app(settings)` builds nothing yet; the lifespan opens the Feast store, loads the
models, starts the prediction log and the registry poller, and stops them on shutdown.
A part that cannot start leaves the service up and degraded (and `/readyz` says why):
a scoring service that refuses to answer is worse than one that answers with rules.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.settings import Settings
from monitoring.metrics import ScoringMetrics
from services.scoring import no_torch
from services.scoring.controls import SharedControls
from services.scoring.deps import Service
from services.scoring.features import CircuitBreaker, FeatureClient, Reader
from services.scoring.models import ModelHolder
from services.scoring.prediction_log import PredictionLog
from services.scoring.routes import admin, health, score
from services.scoring.rules import Rules
from services.scoring.scorer import Controls, Scorer

log = logging.getLogger(__name__)


def open_reader(settings: Settings) -> tuple[Reader | None, bool]:
    """The Feast online reader and whether to read inline (local SQLite), or None (logged)."""
    no_torch.install()
    try:
        from feature_repo.store import OnlineReader, open_store

        reader = OnlineReader(open_store(settings))
        reader.read("warm-up", None, None)  # opens the connection now, not within a request
        if reader.is_local:
            reader.limit_lock_wait(max(1, round(settings.feature_timeout_ms)))
        return reader.read, reader.is_local
    except Exception as error:
        log.error("feature store unavailable, scoring with request-time features: %s", error)
        return None, False


def build_service(settings: Settings) -> Service:
    metrics = ScoringMetrics()
    metrics.set_breaker("closed")
    breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_seconds, metrics.set_breaker)
    reader, inline = open_reader(settings)
    features = FeatureClient(reader, settings.feature_timeout_ms / 1e3, breaker, metrics, inline)
    models = ModelHolder(settings, metrics)
    models.reload()
    prediction_log = PredictionLog(settings, metrics) if settings.prediction_log else None
    controls = Controls(settings.canary_percent, settings.kill_switch)
    shared = SharedControls(settings, controls)
    scorer = Scorer(features, Rules(settings), models, prediction_log, controls, metrics)
    return Service(settings, metrics, features, models, prediction_log, controls, shared, scorer)


def _field(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if p != "body"]
    return ".".join(parts) or "body"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = build_service(settings)
        app.state.service = service
        if service.prediction_log is not None:
            challenger = service.models.current.challenger
            await service.prediction_log.start(challenger.version if challenger else None)
        service.models.start_polling()
        service.shared_controls.start()
        # Everything loaded so far lives as long as the process: keep the collector off it,
        # so a full collection does not walk Feast's and MLflow's objects mid-request.
        gc.freeze()
        # The feature read runs on its own thread and needs the GIL back to return. With
        # CPython's default 5 ms switch interval, a busy event loop makes it wait up to 5 ms
        # per hand-over: the whole lookup budget. 0.5 ms keeps hand-overs well inside it.
        sys.setswitchinterval(0.0005)
        yield
        await service.shared_controls.stop()
        service.models.stop()
        if service.prediction_log is not None:
            await service.prediction_log.stop()
        service.features.close()

    app = FastAPI(
        title="fraud scoring service",
        version="1",
        description="Real-time card-fraud decisions: online features, rules, ONNX model, decision bands.",
        lifespan=lifespan,
        max_body_size=settings.max_body_bytes,  # 413 past it, declared length or streamed
    )
    app.include_router(score.router)
    app.include_router(health.router)
    app.include_router(admin.router)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = {_field(e["loc"]): e["msg"] for e in error.errors()}
        request.app.state.service.metrics.invalid_requests.labels("422").inc()
        return JSONResponse(
            {"detail": f"invalid field(s): {', '.join(fields)}", "fields": fields},
            status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    return app
