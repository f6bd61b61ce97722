"""Benchmark: backfill throughput on ~1M transactions and Feast online read latency.

Writes a 1M-transaction dataset under var/bench/ (reused if present), backfills it into
a Feast store under var/bench/, then times `read_online` — one transaction's full
feature vector inputs (card + merchant + device) — for a sample of transactions.

The backfill runs once (it takes minutes): ``backfill_seconds_runs`` lists that one run.
The online reads are timed in ``READ_RUNS`` runs of ``READS`` reads (each run its own
sample, after its own warm-up); p50 / p99 are the medians of the runs' percentiles, with
``KEY_runs``, and the max is the largest read of all runs.

    python -m benchmarks.bench_feature_store
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from typing import Any

import numpy as np

from benchmarks.bench_simulate import CARDS, DAYS, MERCHANTS, SEED
from benchmarks.isolation import run_in_fresh_process
from benchmarks.runs import with_runs

READS = 2_000  # per run
WARMUP_READS = 100
READ_RUNS = 5  # ~4 s each


def _in_child(queue: multiprocessing.Queue) -> None:
    from core.dataset import read_transactions
    from core.settings import Settings
    from feature_repo.store import open_store, read_online, scoring_service
    from pipelines import simulate
    from pipelines.backfill import backfill

    base = Settings()
    settings = Settings(var_dir=base.var_dir / "bench")
    data = settings.var_dir / "data_1m"
    if not (data / "manifest.json").exists():
        simulate.run(data, simulate.SimulationParams(days=DAYS, cards=CARDS, merchants=MERCHANTS, seed=SEED))
    result = backfill(data, settings)
    backfill_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    per_run = READS + WARMUP_READS
    sample = read_transactions(data).sample(READ_RUNS * per_run, random_state=SEED)
    store = open_store(settings)
    service = scoring_service(store)  # looked up once, as a server would
    runs = []
    for run in range(READ_RUNS):
        latencies = []
        rows = sample.iloc[run * per_run : (run + 1) * per_run]
        for i, row in enumerate(rows.itertuples(index=False)):
            device = row.device_id if isinstance(row.device_id, str) else None
            started = time.perf_counter()
            read_online(store, row.card_id, row.merchant_id, device, service)
            if i >= WARMUP_READS:
                latencies.append((time.perf_counter() - started) * 1e3)
        runs.append(np.array(latencies))
    queue.put(
        {
            "backfill_transactions": result.transactions,
            **with_runs("backfill_seconds", [result.seconds], ndigits=2),
            "backfill_rows_per_second": round(result.transactions / result.seconds, 1),
            "backfill_peak_rss_mb": round(backfill_peak_kib / 1024, 1),
            **with_runs("online_read_p50_ms", [float(np.percentile(ms, 50)) for ms in runs], ndigits=3),
            **with_runs("online_read_p99_ms", [float(np.percentile(ms, 99)) for ms in runs], ndigits=3),
            "online_read_max_ms": round(max(float(ms.max()) for ms in runs), 3),
            "online_reads": READS,  # a run
        }
    )


def run_benchmark() -> dict[str, Any]:
    """Backfill ~1M transactions and time online reads, in a fresh child process."""
    return run_in_fresh_process(_in_child, timeout_s=3_000)


if __name__ == "__main__":
    print(json.dumps(run_benchmark()))
