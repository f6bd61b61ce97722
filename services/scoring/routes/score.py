"""POST /v1/score: one transaction in, one decision out."""

from __future__ import annotations

from fastapi import APIRouter

from services.scoring.deps import ServiceDep
from services.scoring.schemas import ScoreOut, TransactionIn

router = APIRouter(prefix="/v1", tags=["score"])


@router.post("/score", response_model=ScoreOut, responses={422: {"description": "A field is invalid."}})
async def score(transaction: TransactionIn, service: ServiceDep) -> ScoreOut:
    """Score one authorization: features, rules, model, decision band."""
    with service.metrics.request_seconds.time():
        decision = await service.scorer.score(transaction)
    return ScoreOut(**decision.__dict__)
