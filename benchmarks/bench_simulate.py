"""Benchmark: how long the simulator takes for a million transactions (SLO: <= 60 s, 2 GB).

The simulation runs in a fresh child process, so the peak resident memory reported is
the simulator's own, not that of whatever imported this module first.

    python -m benchmarks.bench_simulate
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from typing import Any

from benchmarks.isolation import run_in_fresh_process

# 30 days x 22,200 cards at ~1.5 purchases a card a day (weekday-adjusted) is ~1,000,000 transactions.
DAYS = 30
CARDS = 22_200
MERCHANTS = 2_000
SEED = 7


def _simulate_in_child(queue: multiprocessing.Queue) -> None:
    from pipelines.simulate import simulate  # imported here: the child's own memory is what we measure

    started = time.perf_counter()
    transactions, labels = simulate(days=DAYS, cards=CARDS, merchants=MERCHANTS, seed=SEED)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put(
        {"seconds": seconds, "transactions": len(transactions), "labels": len(labels), "peak_kib": peak_kib}
    )


def run_benchmark() -> dict[str, Any]:
    """Simulate ~1,000,000 transactions in a child process and measure time and peak memory.

    Returns:
        ``simulate_1m_seconds`` (wall time of ``simulate``), ``simulate_transactions``,
        ``simulate_peak_rss_mb`` (child's peak resident memory, imports included) and
        ``simulate_transactions_per_second``.
    """
    result = run_in_fresh_process(_simulate_in_child, timeout_s=600)
    return {
        "simulate_1m_seconds": round(result["seconds"], 3),
        "simulate_transactions": result["transactions"],
        "simulate_labels": result["labels"],
        "simulate_peak_rss_mb": round(result["peak_kib"] / 1024, 1),
        "simulate_transactions_per_second": round(result["transactions"] / result["seconds"], 1),
    }


if __name__ == "__main__":
    print(json.dumps(run_benchmark()))
