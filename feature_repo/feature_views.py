"""Feature views: what is stored per entity, with types and TTLs.

Field names and order come from `core.features`, the one feature logic, so a feature
cannot be renamed in one place and not the other.
"""

from datetime import timedelta

from feast import FeatureView, Field, PushSource
from feast.types import Array, FeastType, Float64, Int64, String

from core import features
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW
from feature_repo.entities import card, device, merchant


def _type_of(name: str) -> FeastType:
    if name in ("card_known_devices", "card_known_countries"):
        return Array(String)
    if name.endswith("_last_seen_us"):
        return Array(Int64)
    if name == "card_home_country":
        return String
    if "count" in name or "distinct" in name or name.endswith("_at_us"):
        return Int64
    return Float64


def _schema(names: list[str]) -> list[Field]:
    return [Field(name=name, dtype=_type_of(name)) for name in names]


def _micros(us: int) -> timedelta:
    return timedelta(microseconds=us)


def build_feature_views(sources: dict[str, PushSource]) -> dict[str, FeatureView]:
    """The three feature views, keyed by name."""
    return {
        CARD_VIEW: FeatureView(
            name=CARD_VIEW,
            entities=[card],
            ttl=_micros(features.CARD_TTL),
            schema=_schema(features.CARD_FEATURES),
            source=sources[CARD_VIEW],
            online=True,
            description="Card velocity over 10m/1h/24h/7d, 30-day habits, known devices and countries, "
            "anchored at the card's latest transaction.",
            owner="fraud-ml@example.com",
            tags={"refresh": "per event"},
        ),
        MERCHANT_VIEW: FeatureView(
            name=MERCHANT_VIEW,
            entities=[merchant],
            ttl=_micros(features.MERCHANT_TTL),
            schema=_schema(features.MERCHANT_FEATURES),
            source=sources[MERCHANT_VIEW],
            online=True,
            description="Merchant volume and fraud rate over the 28 days ending 7 days ago, "
            "counting only labels already reported; refreshed at 00:00 UTC.",
            owner="fraud-ml@example.com",
            tags={"refresh": "daily"},
        ),
        DEVICE_VIEW: FeatureView(
            name=DEVICE_VIEW,
            entities=[device],
            ttl=_micros(features.DEVICE_TTL),
            schema=_schema(features.DEVICE_FEATURES),
            source=sources[DEVICE_VIEW],
            online=True,
            description="Device activity over 24h, anchored at the device's latest transaction.",
            owner="fraud-ml@example.com",
            tags={"refresh": "per event"},
        ),
    }
