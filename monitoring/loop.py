"""The closed loop's parts, wired into the monitor's evaluator as hooks (one per part)."""

from __future__ import annotations

from core.settings import Settings
from monitoring.evaluator import Hook


def default_hooks(settings: Settings) -> dict[str, Hook]:
    return {}
