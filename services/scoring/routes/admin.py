"""Operator controls, behind the bearer token of the settings."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends

from services.scoring.deps import ServiceDep, require_admin
from services.scoring.schemas import INVALID, CanaryIn, KillSwitchIn

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={401: {"description": "Admin token missing or wrong."}, **INVALID},
)


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
    service.controls.canary_percent = body.percent
    log.warning("canary share set to %.1f%%", body.percent)
    return {"canary_percent": body.percent}


@router.post("/kill-switch")
async def kill_switch(body: KillSwitchIn, service: ServiceDep) -> dict[str, bool]:
    service.controls.kill_switch = body.state == "on"
    log.warning("kill switch %s", body.state)
    return {"kill_switch": service.controls.kill_switch}
