"""The audit trail: one append-only log of every action on the models, by a person or the monitor.

DESIGN.md section 6: the time, the actor (`monitor` or a user), the action, the versions and
the reason with its numbers. Alias moves (`promote`, `rollback`) are recorded here by
`models.registry` itself, whoever calls it; the monitor adds its own actions (canary steps
and stops, retraining, drift alarms). `fraudctl models` and the monitor's page read it.

It is a JSON-lines file under `var/` (shared by every process of the profile), appended one
line per action with a single write, so concurrent writers do not interleave within a line.
"""

from __future__ import annotations

import getpass
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.settings import Settings

ACTIONS = (
    "promote",  # an alias moved to a version
    "rollback",  # champion moved back to the version that held it before
    "canary_step",  # the canary share changed (up a step, or set by hand)
    "canary_stop",  # a failed check set the canary share to 0
    "retrain",  # a challenger was trained and passed the promotion gate
    "retrain_rejected",  # a retrained model failed the gate and was not registered as challenger
    "drift_alarm",  # a sustained drift alarm was raised
    "performance_alarm",  # matured labels found fraud the champion's scores did not expect
)


def audit_path(settings: Settings) -> Path:
    return settings.var_dir / "audit" / "actions.jsonl"


def record(
    settings: Settings,
    action: str,
    reason: str,
    *,
    actor: str | None = None,
    versions: dict[str, str | None] | None = None,
    numbers: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Append one action; returns the entry as written."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: one of {', '.join(ACTIONS)}")
    entry = {
        "at": (at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "actor": actor or getpass.getuser(),
        "action": action,
        "versions": versions or {},
        "reason": reason,
        "numbers": numbers or {},
    }
    path = audit_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write per line: O_APPEND keeps concurrent lines whole
    finally:
        os.close(fd)
    return entry


def read(settings: Settings, last: int | None = None) -> list[dict[str, Any]]:
    """The entries, oldest first (the last `last` of them); a torn last line is skipped."""
    path = audit_path(settings)
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries[-last:] if last else entries
