"""Runs the benchmarks and writes one JSON file per benchmark (DESIGN.md section 7).

`make bench` / `fraudctl bench [--only NAME]`. Each file is
`{"benchmark", "command", "code", "machine", "timestamp", "started_at", "duration_seconds",
"metrics"}` so any two runs compare, and each figure can be traced to the code and the
machine (with its load) that produced it:

- ``code``: ``{"commit", "dirty", "modified"}`` of this tree (`benchmarks.provenance`;
  None where there is no git), taken when the benchmark starts and again when it ends;
- ``machine``: CPUs, CPU model, memory, Python, platform, and the load average at the start
  and at the end (this is a shared 2-core machine: a busy one makes noisy figures);
- ``timestamp``: when the benchmark finished (UTC); ``started_at`` and ``duration_seconds``;
- ``metrics``: the benchmark's figures; one measured over several runs also has ``KEY_runs``.

`make bench` then regenerates the README's table (`python -m benchmarks.readme_table --write`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import (
    bench_drift,
    bench_feature_store,
    bench_monitor,
    bench_score,
    bench_simulate,
    bench_stream,
    bench_stream_skew,
    bench_train,
)
from benchmarks.provenance import code_during, code_version, load_average, machine

RESULTS_DIR = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, Callable[[], dict[str, Any]]] = {
    "simulate": bench_simulate.run_benchmark,
    "feature_store": bench_feature_store.run_benchmark,
    "stream": bench_stream.run_benchmark,
    "stream_skew": bench_stream_skew.run_benchmark,
    "train": bench_train.run_benchmark,
    "score": bench_score.run_benchmark,
    "monitor": bench_monitor.run_benchmark,
    "drift": bench_drift.run_benchmark,
}


def command(name: str) -> str:
    """The command that writes ``benchmarks/results/NAME.json`` (`python -m benchmarks.bench_NAME`
    only prints the metrics)."""
    return f"fraudctl bench --only {name}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_one(name: str) -> dict[str, Any]:
    """Run one benchmark and return its record (not written)."""
    function = BENCHMARKS[name]
    code_at_start, machine_at_start, started_at = code_version(), machine(), _now()
    started = time.perf_counter()
    metrics = function()
    duration = time.perf_counter() - started
    return {
        "benchmark": name,
        "command": command(name),
        "code": code_during(code_at_start, code_version()),
        "machine": machine_at_start | {"load_average_at_end": load_average()},
        "timestamp": _now(),
        "started_at": started_at,
        "duration_seconds": round(duration, 1),
        "metrics": metrics,
    }


def run_benchmarks(only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the named benchmarks (all by default) and write their JSON results."""
    names = only or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    console = Console()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        console.print(f"[bold]benchmark {name}[/] …")
        record = run_one(name)
        metrics = record["metrics"]
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        table = Table(title=name)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
        console.print(table)
        code = record["code"]
        console.print(
            f"{name}: {record['duration_seconds']:,} s at commit {code['commit'] or 'unknown'}"
            + (f" (dirty: {', '.join(code['modified'])})" if code["dirty"] else "")
        )
        results[name] = record
    console.print("README table: python -m benchmarks.readme_table --write (`make bench` runs it)")
    return results
