"""Operator controls, behind the bearer token of the settings."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status

from services.scoring.deps import Service, ServiceDep, require_admin
from services.scoring.schemas import INVALID, CanaryIn, KillSwitchIn

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={
        401: {"description": "Admin token missing or wrong."},
        503: {"description": "The shared controls could not be written: nothing changed."},
        **INVALID,
    },
)


async def _set(service: Service, **changes: Any) -> None:
    try:
        await service.shared_controls.set(**changes)
    except Exception as error:
        where = service.shared_controls.store.where
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"controls not changed: {where} unavailable ({error})"
        ) from error


@router.post("/reload")
async def reload(service: ServiceDep) -> dict[str, Any]:
    """Resolve the aliases again and swap in what changed (loading runs off the event loop)."""
    current = await asyncio.to_thread(service.models.reload)
    return {
        "champion": current.champion.version if current.champion else None,
        "challenger": current.challenger.version if current.challenger else None,
        "errors": current.errors,
    }


@router.post("/canary")
async def canary(body: CanaryIn, service: ServiceDep) -> dict[str, float]:
    """Give the challenger this share of the cards, on every replica (within a second)."""
    await _set(service, canary_percent=body.percent)
    log.warning("canary share set to %.1f%% (%s)", body.percent, service.shared_controls.store.where)
    return {"canary_percent": body.percent}


@router.post("/kill-switch")
async def kill_switch(body: KillSwitchIn, service: ServiceDep) -> dict[str, bool]:
    """Models off (rules only) or on again, on every replica (within a second)."""
    await _set(service, kill_switch=body.state == "on")
    log.warning("kill switch %s (%s)", body.state, service.shared_controls.store.where)
    return {"kill_switch": service.controls.kill_switch}
