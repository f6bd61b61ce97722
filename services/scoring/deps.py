"""What routes get injected: the scorer and the service's parts, and the admin check."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from core.settings import Settings
from monitoring.metrics import ScoringMetrics
from services.scoring.controls import SharedControls
from services.scoring.features import FeatureClient
from services.scoring.models import ModelHolder
from services.scoring.prediction_log import PredictionLog
from services.scoring.scorer import Controls, Scorer


@dataclass
class Service:
    """Everything one scoring process holds; built in `app.create_app`, kept on app.state."""

    settings: Settings
    metrics: ScoringMetrics
    features: FeatureClient
    models: ModelHolder
    prediction_log: PredictionLog | None
    controls: Controls  # what this process applies now; the scorer reads it per request
    shared_controls: SharedControls  # keeps `controls` in step with every other replica
    scorer: Scorer


async def get_service(request: Request) -> Service:
    # async on purpose: FastAPI runs a plain `def` dependency in its threadpool, a thread
    # hop per request (measured: the largest single cost after the model, under load).
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
_bearer = HTTPBearer(auto_error=False)


async def require_admin(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), service.settings.admin_token.encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "admin token missing or wrong",
            headers={"WWW-Authenticate": "Bearer"},
        )
