"""Benchmark: how long the simulator takes for a million transactions (SLO: <= 60 s, 2 GB).

Each simulation runs in a fresh child process, so the peak resident memory reported is
the simulator's own, not that of whatever imported this module first. It is repeated
``RUNS`` times (a run is ~3 s plus the child's imports): the time is the median, the peak
memory the largest, each with its ``KEY_runs``.

    python -m benchmarks.bench_simulate
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from typing import Any

from benchmarks.isolation import run_in_fresh_process
from benchmarks.runs import with_runs

# 30 days x 22,200 cards at ~1.5 purchases a card a day (weekday-adjusted) is ~1,000,000 transactions.
DAYS = 30
CARDS = 22_200
MERCHANTS = 2_000
SEED = 7
RUNS = 5


def _simulate_in_child(queue: multiprocessing.Queue) -> None:
    from pipelines.simulate import simulate  # imported here: the child's own memory is what we measure

    started = time.perf_counter()
    transactions, labels = simulate(days=DAYS, cards=CARDS, merchants=MERCHANTS, seed=SEED)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    queue.put(
        {"seconds": seconds, "transactions": len(transactions), "labels": len(labels), "peak_kib": peak_kib}
    )


def run_benchmark(runs: int = RUNS) -> dict[str, Any]:
    """Simulate ~1,000,000 transactions ``runs`` times, each in a fresh child process.

    Returns:
        ``simulate_1m_seconds`` (median wall time of ``simulate``, and ``_runs``),
        ``simulate_transactions``, ``simulate_labels`` (the same every run: one seed),
        ``simulate_peak_rss_mb`` (the largest child's peak resident memory, imports included,
        and ``_runs``) and ``simulate_transactions_per_second`` (at the median time).
    """
    results = [run_in_fresh_process(_simulate_in_child, timeout_s=600) for _ in range(runs)]
    seconds = with_runs("simulate_1m_seconds", [r["seconds"] for r in results], ndigits=3)
    transactions = results[0]["transactions"]
    return {
        **seconds,
        "simulate_transactions": transactions,
        "simulate_labels": results[0]["labels"],
        **with_runs(
            "simulate_peak_rss_mb", [r["peak_kib"] / 1024 for r in results], ndigits=1, statistic=max
        ),
        "simulate_transactions_per_second": round(transactions / seconds["simulate_1m_seconds"], 1),
    }


if __name__ == "__main__":
    print(json.dumps(run_benchmark()))
