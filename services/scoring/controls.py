"""The operator controls (canary share, kill switch), shared by every scoring process.

With three replicas behind a load balancer, `POST /admin/kill-switch` reaches one of them,
so the controls live in one place that every replica reads: a JSON file under `var/` in
the embedded profile (every process on the machine shares `var_dir`), a Redis hash in the
compose profile (DESIGN.md section 3). Each process keeps the values in memory, so the
request path reads two attributes and does no I/O, and re-reads the shared copy every
`controls_poll_seconds`: a change reaches every replica within that bound, and the replica
that took the admin call applies it at once.

Until an operator sets one, a control has the value of the settings the process started
with. Once set, the shared value wins over the settings, on every replica and after a
restart: a replica that crash-restarts with `--canary 10` in its command line must not
undo an operator's stop.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from core.settings import Settings
from services.scoring.scorer import Controls

log = logging.getLogger(__name__)

FIELDS = ("canary_percent", "kill_switch")


class ControlStore(Protocol):
    where: str

    def read(self) -> dict[str, Any]:
        """The controls an operator has set (a subset of FIELDS; empty if none)."""
        ...

    def write(self, changes: dict[str, Any]) -> None:
        """Set these controls, leaving the others as they are."""
        ...


class FileControlStore:
    """A JSON file; a writer holds an flock, so two admin calls never lose one another's field."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = f"file {path}"
        self._seen: tuple[int, int] | None = None
        self._values: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        if (stat.st_mtime_ns, stat.st_size) != self._seen:  # re-parse only what changed
            self._values = json.loads(self.path.read_text())
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return dict(self._values)

    def write(self, changes: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / f"{self.path.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            values = {}
            with suppress(FileNotFoundError):
                values = json.loads(self.path.read_text())
            values.update(changes, updated_at=time.time())
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(values))
            tmp.replace(self.path)  # a reader sees the old file or the new one, never half


class RedisControlStore:
    """One Redis hash; HSET sets each field on its own, atomically."""

    def __init__(self, redis_url: str, project: str) -> None:
        import redis

        host, _, port = redis_url.removeprefix("redis://").partition(":")
        self.client = redis.Redis(host=host, port=int(port or 6379), socket_timeout=1.0)
        self.key = f"{project}:scoring_controls"
        self.where = f"redis {redis_url} {self.key}"

    def read(self) -> dict[str, Any]:
        raw: dict[bytes, bytes] = self.client.hgetall(self.key)  # type: ignore[assignment]
        return {k.decode(): json.loads(v) for k, v in raw.items() if k.decode() in FIELDS}

    def write(self, changes: dict[str, Any]) -> None:
        self.client.hset(self.key, mapping={k: json.dumps(v) for k, v in changes.items()})


def open_store(settings: Settings) -> ControlStore:
    if settings.profile == "compose":
        return RedisControlStore(settings.redis_url, settings.feast_project)
    return FileControlStore(settings.var_dir / "scoring_controls.json")


class SharedControls:
    """The process's `Controls`, kept in step with the shared store."""

    def __init__(self, settings: Settings, controls: Controls, store: ControlStore | None = None) -> None:
        self.controls = controls
        self.store = store or open_store(settings)
        self.poll_seconds = settings.controls_poll_seconds
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None
        # A poll's read must not land after a `set` it started before (stale for a poll).
        self._lock = asyncio.Lock()

    def refresh(self) -> dict[str, Any]:
        """Apply what the store holds and return it; a store that cannot be read leaves the
        values as they are (and returns {})."""
        try:
            shared = self.store.read()
        except Exception as error:  # noqa: BLE001 - Redis down, a bad file: keep serving
            if self._failing_since is None:
                log.warning(
                    "scoring controls unreadable in %s, keeping the last values: %s", self.store.where, error
                )
                self._failing_since = time.monotonic()
            return {}
        if self._failing_since is not None:
            log.warning("scoring controls readable again in %s", self.store.where)
            self._failing_since = None
        for name in FIELDS:
            if name in shared:
                setattr(self.controls, name, type(getattr(self.controls, name))(shared[name]))
        return shared

    async def set(self, **changes: Any) -> None:
        """An operator's change: into the store (every replica), then here at once.

        Raises:
            Exception: the store could not be written; nothing changed anywhere.
        """
        async with self._lock:
            await asyncio.to_thread(self.store.write, changes)
            for name, value in changes.items():
                setattr(self.controls, name, value)

    def start(self) -> None:
        if self.refresh():
            log.warning("scoring controls from %s: %s", self.store.where, self.describe())
        self._task = asyncio.get_running_loop().create_task(self._poll(), name="controls-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            async with self._lock:
                await asyncio.to_thread(self.refresh)

    def describe(self) -> dict[str, Any]:
        return {
            "canary_percent": self.controls.canary_percent,
            "kill_switch": self.controls.kill_switch,
            "shared_in": self.store.where,
        }
