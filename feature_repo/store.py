"""Opening the Feast store for the active profile, registering the definitions, online reads.

The profile picks the `feature_store*.yaml`; the settings fill its placeholders. Every
stage that touches Feast goes through `open_store`, so none of them builds its own config.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any

import yaml
from feast import FeatureService, FeatureStore, RepoConfig
from feast.errors import FeatureServiceNotFoundException
from feast.infra.online_stores.sqlite import SqliteOnlineStore

from core.dataset import DatasetError
from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW
from core.features import CARD_FEATURES, DEVICE_FEATURES, MERCHANT_FEATURES, Snapshot
from core.settings import Settings
from feature_repo.data_sources import build_sources
from feature_repo.entities import ALL_ENTITIES
from feature_repo.feature_services import FRAUD_SCORING_SERVICE, build_feature_services
from feature_repo.feature_views import build_feature_views

# Feast re-enables DeprecationWarnings on import, and ibis (its DuckDB engine) raises one on
# every query about its own API; nothing here can act on it.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ibis\..*")

REPO_DIR = Path(__file__).resolve().parent
YAML_BY_PROFILE = {"embedded": "feature_store.yaml", "compose": "feature_store.compose.yaml"}


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast config of the active profile, placeholders filled from the settings."""
    text = (REPO_DIR / YAML_BY_PROFILE[settings.profile]).read_text()
    values = {
        "feast_project": settings.feast_project,
        "feast_dir": str(settings.feast_dir),
        "redis_url": settings.redis_url,
    }
    config = RepoConfig(**yaml.safe_load(Template(text).substitute(values)))
    config.repo_path = REPO_DIR
    return config


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for the active profile (creates `var/feast/` if needed)."""
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings))


def definitions(settings: Settings) -> list[Any]:
    """Every Feast object of the repository, built for this checkout's paths."""
    sources = build_sources(settings.offline_dir)
    views = build_feature_views(sources)
    return [*ALL_ENTITIES, *sources.values(), *views.values(), *build_feature_services(views)]


def apply_definitions(store: FeatureStore, settings: Settings) -> None:
    """Register (or update) entities, sources, views and services; idempotent."""
    store.apply(definitions(settings))


def ensure_definitions(store: FeatureStore, settings: Settings) -> bool:
    """Apply the definitions only if a feature view is missing; returns whether it applied.

    The registry is one file with one writer, the backfill (in compose, the init job): a
    stream processor, of which several may start at once, writes it only to a store nobody
    has backfilled, so that it has views to write into.
    """
    registered = {view.name for view in store.list_feature_views()}
    if registered >= set(build_feature_views(build_sources(settings.offline_dir))):
        return False
    apply_definitions(store, settings)
    return True


def scoring_service(store: FeatureStore) -> FeatureService:
    """The model's feature service; a clear error when nothing has been backfilled yet."""
    try:
        return store.get_feature_service(FRAUD_SCORING_SERVICE)
    except FeatureServiceNotFoundException as missing:
        raise DatasetError(
            f"no feature store in project {store.project!r}: run `fraudctl backfill` first"
        ) from missing


def _split(row: dict[str, Any], names: Sequence[str], at_key: str) -> Snapshot | None:
    if row.get(at_key) is None:
        return None
    return {name: row.get(name) for name in names}


def read_online(
    store: FeatureStore,
    card_id: str,
    merchant_id: str | None = None,
    device_id: str | None = None,
    service: FeatureService | None = None,
) -> dict[str, Snapshot | None]:
    """The card, merchant and device snapshots the online store holds now (None when absent).

    Pass `service` (from `scoring_service`) on a hot path: looking it up rebuilds it from
    the registry's protobuf, which costs more than the read itself.
    """
    entity = {"card_id": card_id, "merchant_id": merchant_id or "", "device_id": device_id or ""}
    response = store.get_online_features(features=service or scoring_service(store), entity_rows=[entity])
    row = {name: values[0] for name, values in response.to_dict().items()}
    return {
        "card": _split(row, CARD_FEATURES, "card_last_txn_at_us"),
        "merchant": _split(row, MERCHANT_FEATURES, "merchant_snapshot_at_us") if merchant_id else None,
        "device": _split(row, DEVICE_FEATURES, "device_last_txn_at_us") if device_id else None,
    }


class OnlineReader:
    """The scoring service's online read: one provider read per feature view, no planning.

    ``get_online_features`` (``read_online`` above) plans the feature service, validates
    and converts through arrow on every call: ~1 ms of Python per request. The service
    reads the same three views of the same service through the same Feast provider
    (``online_read``), which is the part of that call that touches the store. A test holds
    the two to equal results.
    """

    def __init__(self, store: FeatureStore) -> None:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self._entity_key, self._value = EntityKey, Value
        self.store = store
        self.config = store.config
        self.provider = store._get_provider()
        service = scoring_service(store)
        views = {view.name: store.get_feature_view(view.name) for view in service.feature_view_projections}
        self._views = [
            (entity, views[view_name], key, names, at_key)
            for entity, view_name, key, names, at_key in _VIEWS_OF_THE_SERVICE
        ]

    @property
    def is_local(self) -> bool:
        """SQLite: a read is a local file access, bounded by `limit_lock_wait`."""
        return isinstance(self.provider.online_store, SqliteOnlineStore)

    def limit_lock_wait(self, milliseconds: int) -> None:
        """SQLite only: give up on a locked database after this long (its own default: 5 s)."""
        store = self.provider.online_store
        assert isinstance(store, SqliteOnlineStore), "only SQLite waits for locks"
        store._get_conn(self.config).execute(f"PRAGMA busy_timeout = {int(milliseconds)}")

    def read(
        self, card_id: str, merchant_id: str | None = None, device_id: str | None = None
    ) -> dict[str, Snapshot | None]:
        """The card, merchant and device snapshots the online store holds now (None when absent)."""
        ids = {"card": card_id, "merchant": merchant_id, "device": device_id}
        found: dict[str, Snapshot | None] = {}
        for entity, view, key, names, at_key in self._views:
            entity_id = ids[entity]
            if not entity_id:
                found[entity] = None
                continue
            entity_key = self._entity_key(join_keys=[key], entity_values=[self._value(string_val=entity_id)])
            _, values = self.provider.online_read(self.config, view, [entity_key], list(names))[0]
            if not values:
                found[entity] = None
                continue
            row = {name: _python(values[name]) if name in values else None for name in names}
            found[entity] = _split(row, names, at_key)
        return found


def _python(value: Any) -> Any:
    """A Feast ValueProto as Python, for the types our views store (int64, double, string and
    their lists): what `feast.type_map.feast_value_type_to_python_type` returns for them, at a
    third of its cost (it dispatches on every type Feast knows). A test holds the two equal."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    field = getattr(value, kind)
    return list(field.val) if kind.endswith("_list_val") else field


# entity, feature view, join key, features, the timestamp feature that says a row exists
_VIEWS_OF_THE_SERVICE = [
    ("card", CARD_VIEW, "card_id", CARD_FEATURES, "card_last_txn_at_us"),
    ("merchant", MERCHANT_VIEW, "merchant_id", MERCHANT_FEATURES, "merchant_snapshot_at_us"),
    ("device", DEVICE_VIEW, "device_id", DEVICE_FEATURES, "device_last_txn_at_us"),
]
