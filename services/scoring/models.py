"""Champion and challenger, loaded from the registry by alias, swapped atomically.

A request reads `ModelHolder.current` once and uses that `ModelSet` to the end, so it can
never mix versions; a reload builds a complete new `ModelSet` off the request path and
replaces the reference in one assignment. A version that fails to load never replaces a
working one: the holder keeps serving what it had and reports the error. With no
champion at all the service decides by rules only.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.features import MODEL_FEATURES
from core.settings import Settings
from models import registry
from models.runtime import OnnxScorer
from monitoring.metrics import ScoringMetrics
from services.scoring import reasons

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingModel:
    version: str
    model_type: str
    scorer: OnnxScorer
    typical: np.ndarray  # per-feature medians of the reference sample (for reasons)

    @classmethod
    def load(cls, settings: Settings, version: str) -> ServingModel:
        loaded = registry.load_version(settings, version=version)
        scorer = OnnxScorer(loaded.onnx_bytes, loaded.metadata)
        if scorer.features != MODEL_FEATURES:
            raise registry.RegistryError(
                f"version {version} expects other features than this service computes "
                f"({len(scorer.features)} vs {len(MODEL_FEATURES)})"
            )
        sample = loaded.folder / "extra_files" / registry.REFERENCE_SAMPLE_FILE
        typical = pd.read_parquet(sample, columns=MODEL_FEATURES).median().to_numpy(np.float32)
        # Score once here: a file that loads but cannot run fails now, not on a request.
        scorer.score(typical[None, :])
        return cls(version, str(loaded.metadata.get("model_type", "?")), scorer, typical)

    def score(self, vector: np.ndarray) -> float:
        """The calibrated score of one vector."""
        return float(self.scorer.score(vector[None, :])[0])

    def explain(self, vector: np.ndarray) -> list[str]:
        """The features behind the score of one vector (one ONNX call for all variants)."""
        rows, differing = reasons.occlusion_rows(vector, self.typical)
        return reasons.explain(vector, self.typical, self.scorer.score(rows), differing)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_type": self.model_type,
            "thresholds": self.scorer.thresholds.as_dict(),
            "calibration": self.scorer.calibration["method"],
        }


@dataclass(frozen=True)
class ModelSet:
    champion: ServingModel | None = None
    challenger: ServingModel | None = None
    errors: dict[str, str] = field(default_factory=dict)  # alias -> why it is not loaded


def _served(models: ModelSet) -> dict[str, str | None]:
    """The version each alias is served by (None: nothing loaded for it)."""
    return {
        registry.CHAMPION: models.champion.version if models.champion else None,
        registry.CHALLENGER: models.challenger.version if models.challenger else None,
    }


class ModelHolder:
    """Loads `champion` and `challenger`, reloads on demand or when an alias moves."""

    def __init__(self, settings: Settings, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.current = ModelSet(errors={"champion": "not loaded yet"})
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _alias_versions(self) -> dict[str, str | None]:
        client = registry.connect(self.settings)
        return {
            alias: registry.current_version(client, alias)
            for alias in (registry.CHAMPION, registry.CHALLENGER)
        }

    def reload(self) -> ModelSet:
        """Resolve both aliases and load what changed; returns the set now being served."""
        with self._reload_lock:
            old = self.current
            loaded: dict[str, ServingModel | None] = {}
            errors: dict[str, str] = {}
            try:
                versions = self._alias_versions()
            except Exception as error:  # registry unreachable: keep serving what we have
                self.metrics.model_reloads.labels("failed").inc()
                log.error("model registry unreachable: %s", error)
                return old
            for alias, version in versions.items():
                held: ServingModel | None = getattr(old, alias)
                if version is None:
                    loaded[alias], errors[alias] = None, f"no version holds the alias {alias!r}"
                elif held is not None and held.version == version:
                    loaded[alias] = held
                else:
                    try:
                        loaded[alias] = ServingModel.load(self.settings, version)
                    except Exception as error:
                        log.error("cannot load %s version %s: %s", alias, version, error)
                        errors[alias] = f"version {version} failed to load: {type(error).__name__}: {error}"
                        loaded[alias] = held  # keep the working one, if any
            new = ModelSet(loaded["champion"], loaded["challenger"], errors)
            self.current = new  # the one atomic swap
            self.metrics.model_reloads.labels("failed" if errors.get("champion") else "ok").inc()
            self.metrics.model_info.info(
                {
                    "champion_version": new.champion.version if new.champion else "",
                    "challenger_version": new.challenger.version if new.challenger else "",
                }
            )
            if new is not old and (new.champion, new.challenger) != (old.champion, old.challenger):
                log.info(
                    "serving champion %s, challenger %s",
                    new.champion.version if new.champion else None,
                    new.challenger.version if new.challenger else None,
                )
            return new

    def start_polling(self) -> None:
        """Reload when an alias moves in the registry (every `registry_poll_seconds`)."""
        interval = self.settings.registry_poll_seconds
        if interval <= 0 or self._poller is not None:
            return

        def poll() -> None:
            # The alias versions of the last reload that could not load one of them. Retrying
            # them every interval would download the same files, log the same error and count
            # a failed reload each time, for ever: they are tried again once an alias moves
            # (an operator's /admin/reload always retries).
            failed: dict[str, str | None] | None = None
            while not self._stop.wait(interval):
                try:
                    versions = self._alias_versions()
                except Exception as error:
                    log.warning("registry poll failed: %s", error)
                    continue
                if versions == failed:
                    continue
                # After a failure, reload even when the aliases moved back to what is served:
                # that clears the error the failed reload reported.
                if versions != _served(self.current) or failed is not None:
                    before = self.current
                    after = self.reload()
                    if after is before:  # the registry did not answer: try again next interval
                        continue
                    failed = versions if _served(after) != versions else None

        self._poller = threading.Thread(target=poll, name="registry-poll", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
