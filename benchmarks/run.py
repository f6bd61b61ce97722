"""Runs the benchmarks and writes one JSON file per benchmark (DESIGN.md section 6).

`make bench` / `fraudctl bench [--only NAME]`. Each file is
`{"benchmark", "command", "machine", "timestamp", "metrics"}` so any two runs compare.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks import bench_feature_store, bench_score, bench_simulate, bench_stream, bench_train

RESULTS_DIR = Path(__file__).resolve().parent / "results"

BENCHMARKS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "simulate": (bench_simulate.run_benchmark, "python -m benchmarks.bench_simulate"),
    "feature_store": (bench_feature_store.run_benchmark, "python -m benchmarks.bench_feature_store"),
    "stream": (bench_stream.run_benchmark, "python -m benchmarks.bench_stream"),
    "train": (bench_train.run_benchmark, "python -m benchmarks.bench_train"),
    "score": (bench_score.run_benchmark, "python -m benchmarks.bench_score"),
}


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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
        function, command = BENCHMARKS[name]
        console.print(f"[bold]benchmark {name}[/] …")
        metrics = function()
        record = {
            "benchmark": name,
            "command": command,
            "machine": machine(),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": metrics,
        }
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        table = Table(title=name)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in metrics.items():
            table.add_row(key, f"{value:,}" if isinstance(value, int | float) else str(value))
        console.print(table)
        results[name] = record
    return results
