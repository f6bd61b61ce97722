"""Entities: the business objects features are keyed by."""

from feast import Entity, ValueType

card = Entity(
    name="card",
    join_keys=["card_id"],
    value_type=ValueType.STRING,
    description="A payment card (PAN token). Velocity and habit features hang off it.",
    owner="fraud-ml@example.com",
)

merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.STRING,
    description="An acquirer's merchant. Volume and lagged fraud-rate features hang off it.",
    owner="fraud-ml@example.com",
)

device = Entity(
    name="device",
    join_keys=["device_id"],
    value_type=ValueType.STRING,
    description="A device fingerprint seen on e-commerce transactions.",
    owner="fraud-ml@example.com",
)

ALL_ENTITIES = [card, merchant, device]
