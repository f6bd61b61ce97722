"""What a benchmark result was produced by: the code (git) and the machine (with its load).

Kept apart from `benchmarks.run`, which imports every benchmark, so this imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Written while the benchmarks run (results, caches, stores): not the code that produced them.
IGNORED_PREFIXES = ("var/", "benchmarks/results/")


def _git(root: Path, *args: str, git: str) -> str:
    # --no-optional-locks: `git status` must not take the index lock others commit through.
    return subprocess.run(
        [git, "--no-optional-locks", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def modified_files(porcelain_z: str) -> list[str]:
    """Paths from ``git status --porcelain -z`` output, minus what benchmarks write themselves.

    A rename or copy lists its new path (its old path is the next NUL-separated field).
    """
    fields = porcelain_z.split("\0")
    paths = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if "R" in status or "C" in status:
            i += 1  # the old path
        if path.startswith(IGNORED_PREFIXES):
            continue
        paths.append(path)
    return sorted(set(paths))


def code_version(root: Path = PROJECT_ROOT, git: str = "git") -> dict[str, Any]:
    """``{"commit": HEAD's sha, "dirty": bool, "modified": [paths]}`` for the tree at ``root``.

    Untracked files count (a new module is code too), except under var/ and
    benchmarks/results/, which the benchmarks themselves write. Without git, or outside a
    repository (a tarball), every field is None.
    """
    try:
        commit = _git(root, "rev-parse", "HEAD", git=git).strip()
        modified = modified_files(_git(root, "status", "--porcelain", "-z", git=git))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "modified": None}
    return {"commit": commit, "dirty": bool(modified), "modified": modified}


def code_during(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The code a benchmark ran: its state at the start, unless the tree changed while it ran.

    Benchmarks spawn fresh interpreters, which import whatever is on disk at the time: if the
    commit or the modified files changed during the run, the result is marked dirty, lists
    both states' modified files and says ``changed_during_run``.
    """
    if before == after:
        return before
    modified = sorted(set(before.get("modified") or []) | set(after.get("modified") or []))
    return {
        "commit": before.get("commit"),
        "dirty": True,
        "modified": modified,
        "changed_during_run": True,
        "commit_at_end": after.get("commit"),
    }


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first ``model name`` in /proc/cpuinfo (Linux), else what `platform` says, else None."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """The machine, and how busy it was: call it when the benchmark starts."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": load_average(),
    }
