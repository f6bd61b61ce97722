"""The event schema: what a valid transaction is, and the defaults DESIGN.md promises."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from core.events import SCHEMA_VERSION, TRANSACTION_COLUMNS, Transaction

GOOD = {
    "transaction_id": "t1",
    "event_time": "2026-01-31T12:00:00Z",
    "card_id": "c1",
    "merchant_id": "m1",
    "merchant_country": "US",
    "channel": "ecommerce",
    "amount": 12.5,
}


def test_defaults() -> None:
    txn = Transaction(**GOOD)
    assert txn.customer_id == "c1"  # defaults to the card
    assert txn.currency == "USD"
    assert txn.schema_version == SCHEMA_VERSION
    assert txn.event_time == datetime(2026, 1, 31, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", 0),
        ("amount", -1),
        ("merchant_country", "usa"),
        ("channel", "phone"),
        ("event_time", "2026-01-31T12:00:00"),  # no timezone
        ("currency", "dollars"),
        ("transaction_id", ""),
    ],
)
def test_invalid_field_is_named(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as error:
        Transaction(**{**GOOD, field: value})
    assert field in str(error.value)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="scenario"):
        Transaction(**GOOD, scenario="card_testing")  # ground truth never travels on the wire


def test_arrow_schema_has_every_event_field() -> None:
    assert set(Transaction.model_fields) <= set(TRANSACTION_COLUMNS)
