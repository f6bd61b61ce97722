"""Liveness, readiness, metrics and what is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.scoring.deps import ServiceDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it may still be degraded)."""
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(service: ServiceDep, response: Response) -> dict[str, Any]:
    """Ready: a champion loaded, the feature store answering, the prediction writer up; else 503."""
    problems = []
    if service.models.current.champion is None:
        problems.append(service.models.current.errors.get("champion", "no champion loaded"))
    if not service.features.reachable():
        problems.append(f"feature store not reachable (breaker {service.features.breaker.state})")
    if service.prediction_log is not None and not service.prediction_log.ready:
        problems.append("prediction writer starting")
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": not problems, "problems": problems}


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/model")
async def model(service: ServiceDep) -> dict[str, Any]:
    """Champion and challenger versions, thresholds, canary share, kill switch state."""
    current = service.models.current
    return {
        "champion": current.champion.describe() if current.champion else None,
        "challenger": current.challenger.describe() if current.challenger else None,
        "errors": current.errors,
        "canary_percent": service.controls.canary_percent,
        "kill_switch": service.controls.kill_switch,
        "controls_shared_in": service.shared_controls.store.where,
        "feature_breaker": service.features.breaker.state,
    }
