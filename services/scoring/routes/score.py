"""POST /v1/score: one transaction in, one decision out."""

from __future__ import annotations

import json
from dataclasses import asdict

from fastapi import APIRouter, Response

from services.scoring.deps import ServiceDep
from services.scoring.schemas import INVALID, ScoreOut, TransactionIn

router = APIRouter(prefix="/v1", tags=["score"])


@router.post("/score", response_model=ScoreOut, responses=INVALID)
async def score(transaction: TransactionIn, service: ServiceDep) -> Response:
    """Score one authorization: features, rules, model, decision band."""
    with service.metrics.request_seconds.time():
        decision = await service.scorer.score(transaction)
    # `Decision` has ScoreOut's fields and types (a unit test holds them equal); encoding it
    # directly skips FastAPI's validate-then-serialise of the response model.
    return Response(json.dumps(asdict(decision)).encode(), media_type="application/json")
