"""The one event schema (DESIGN.md section 2): what travels on Kafka and lies in parquet.

Pydantic models validate a single event (an API request, a Kafka message); the
arrow schemas describe the same events as columns (what ``simulate`` and ``import``
write). They sit side by side here, and a test fails if a model field is missing
from its arrow schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.iso_codes import COUNTRIES, CURRENCIES

SCHEMA_VERSION = 1

TRANSACTIONS_TOPIC = "transactions"
LABELS_TOPIC = "labels"
PREDICTIONS_TOPIC = "predictions"
DEAD_LETTER_TOPIC = "transactions.dlq"

Channel = Literal["card_present", "ecommerce"]
LabelSource = Literal["chargeback", "analyst", "customer"]

# `scenario` is the simulator's ground truth tag. It lies in parquet for evaluation
# and is never a model feature, never on the wire.
LEGIT_SCENARIO = "legit"
UNKNOWN_SCENARIO = "unknown"

COUNTRY_PATTERN = r"^[A-Z]{2}$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"


# The schema lists the codes (an enum) beside the pattern, so clients know what passes.
_COUNTRY_ENUM: dict[str, Any] = {"enum": sorted(COUNTRIES)}
_CURRENCY_ENUM: dict[str, Any] = {"enum": sorted(CURRENCIES)}
CountryCode = Annotated[str, Field(pattern=COUNTRY_PATTERN, json_schema_extra=_COUNTRY_ENUM)]


def _iso_text(value: object) -> object:
    """A timestamp on the wire is an ISO-8601 string; a number (epoch?) is refused, not guessed."""
    if not isinstance(value, str | datetime):
        raise ValueError("timestamp must be an ISO-8601 string, e.g. 2026-01-31T12:00:00Z")
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (UTC ISO-8601, e.g. 2026-01-31T12:00:00Z)")
    try:
        return value.astimezone(UTC)
    except OverflowError as error:  # e.g. 0001-01-01T00:30+01:00: year 0 in UTC
        raise ValueError("timestamp is out of range once converted to UTC") from error


class Transaction(BaseModel):
    """A card authorization as the payment gateway sees it."""

    # Ids are opaque: taken as sent (no stripping), so what the schema documents is what passes.
    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=64)
    event_time: datetime
    card_id: str = Field(min_length=1, max_length=64)
    customer_id: str | None = Field(default=None, max_length=64)
    merchant_id: str = Field(min_length=1, max_length=64)
    merchant_category: str | None = Field(default=None, max_length=32)
    merchant_country: CountryCode
    channel: Channel
    device_id: str | None = Field(default=None, max_length=64)
    ip_country: CountryCode | None = None
    amount: float = Field(gt=0, le=1_000_000, strict=True)  # a JSON number, not "12.5"
    currency: str = Field(default="USD", pattern=CURRENCY_PATTERN, json_schema_extra=_CURRENCY_ENUM)
    schema_version: int = Field(default=SCHEMA_VERSION, strict=True)

    _text = field_validator("event_time", mode="before")(_iso_text)
    _utc = field_validator("event_time")(_as_utc)

    @field_validator("merchant_country", "ip_country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is not None and value not in COUNTRIES:
            raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
        return value

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCIES:
            raise ValueError(f"{value!r} is not an ISO 4217 currency code")
        return value

    @model_validator(mode="after")
    def _customer_defaults_to_card(self) -> Transaction:
        # DESIGN.md: customer_id is optional and defaults to the card.
        if not self.customer_id:
            self.customer_id = self.card_id
        return self


class Label(BaseModel):
    """A fraud verdict on a transaction, known only from `reported_at` on."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=64)
    card_id: str = Field(min_length=1, max_length=64)
    is_fraud: bool
    reported_at: datetime
    source: LabelSource = "chargeback"

    _text = field_validator("reported_at", mode="before")(_iso_text)
    _utc = field_validator("reported_at")(_as_utc)


class Prediction(BaseModel):
    """What the scoring service decided, with exactly the vector it scored."""

    transaction_id: str
    card_id: str
    # The request's own fields: the skew monitor recomputes the vector offline from them.
    merchant_id: str | None = None
    device_id: str | None = None
    amount: float | None = None
    channel: str | None = None
    merchant_country: str | None = None
    ip_country: str | None = None
    event_time: datetime
    scored_at: datetime
    score: float
    decision: Literal["approve", "review", "decline"]
    served_by: Literal["champion", "canary", "fallback", "kill_switch"]
    model_version: str | None
    # The two arms on the same vector (paired comparisons): on a champion row the challenger
    # scores in shadow; on a canary row (model_version is the challenger) the champion does.
    challenger_version: str | None = None
    challenger_score: float | None = None
    champion_version: str | None = None
    champion_score: float | None = None
    rule_hits: list[str] = Field(default_factory=list)
    features: dict[str, float]
    latency_ms: dict[str, float]


TIMESTAMP = pa.timestamp("us", tz="UTC")

TRANSACTION_ARROW_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("event_time", TIMESTAMP, nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("merchant_category", pa.string(), nullable=False),
        pa.field("merchant_country", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("ip_country", pa.string()),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("scenario", pa.string(), nullable=False),
    ]
)

LABEL_ARROW_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("reported_at", TIMESTAMP, nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

TRANSACTION_COLUMNS = TRANSACTION_ARROW_SCHEMA.names
LABEL_COLUMNS = LABEL_ARROW_SCHEMA.names
