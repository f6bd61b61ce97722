"""Request and response bodies of the HTTP API.

The request is the event schema itself (`core.events.Transaction`): one definition, so the
service accepts exactly what the gateway publishes to Kafka.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.events import Transaction

TransactionIn = Transaction


class ScoreOut(BaseModel):
    transaction_id: str
    score: float = Field(description="Calibrated fraud probability (rules-only score when no model decided).")
    decision: Literal["approve", "review", "decline"]
    reasons: list[str] = Field(description="Rule hits, then the features behind the score, in words.")
    model_version: str | None
    served_by: Literal["champion", "canary", "fallback", "kill_switch"]
    stored_features: list[Literal["card", "merchant", "device"]] = Field(
        description="Entities whose stored features were found and fresh (within the view's TTL and "
        "not after `event_time`); an entity not listed was scored as never seen."
    )
    latency_ms: float


class CanaryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    percent: float = Field(
        ge=0, le=100, strict=True, description="Share of cards (sticky by card) the challenger decides."
    )


class KillSwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["on", "off"]


class ValidationErrorOut(BaseModel):
    """The 422 body: which fields are wrong and why."""

    detail: str
    fields: dict[str, str] = Field(description="Field path (e.g. `amount`) → what is wrong with it.")


INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "A field is invalid; `fields` names it."}
}
