"""Benchmark: the scoring service under open-loop load, one process, on this machine.

Setup (cached under var/bench/score): a simulated dataset, its features backfilled into
Feast (SQLite online store), LightGBM champion and MLP challenger trained and registered.
Then an embedded broker and one `fraudctl serve` process (its own interpreter, as in
production) with shadow scoring and the prediction log on, and `fraudctl loadtest`'s
open-loop client in this process, on the same two cores:

1. 500 req/s for 60 s (after a 5 s warm-up): p50 / p99 / p99.9 and errors.
   SLO: p99 ≤ 10 ms, zero errors (`score_p99_ms_at_500rps`, `score_errors_at_500rps`).
   Where the time goes: mean stage timings from the service's own histograms.
2. Saturation: rates rising by 8 % from 1,000 req/s until a rate misses p99 ≤ 50 ms
   twice in a row; the last passing rate is `score_saturation_rps` (target ≥ 1,500).

    python -m benchmarks.bench_score
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.settings import PROJECT_ROOT, Settings
from models import registry
from pipelines import simulate
from pipelines.broker import EmbeddedBroker
from pipelines.train import LIGHTGBM, MLP, TrainRequest, train
from services.loadtest import ramp, run_load, transaction_pool
from services.serve import free_port, start_in_background

BENCH_DIR = PROJECT_ROOT / "var" / "bench" / "score"
DATA = simulate.SimulationParams(days=28, cards=2_000, merchants=300, seed=7)
RATE, DURATION_S, WARMUP_S, SLO_MS = 500.0, 60.0, 5.0, 10.0
SATURATION_SLO_MS, RAMP_START, RAMP_FACTOR, RAMP_STEP_S = 50.0, 1000.0, 1.08, 10.0


def _trained(settings: Settings) -> None:
    """Train once; later runs reuse the registry (delete var/bench/score to redo)."""
    marker = settings.var_dir / "trained.json"
    if marker.exists():
        return
    data = settings.var_dir / "data"
    simulate.run(data, DATA, progress=True)
    result = train(settings, TrainRequest(data_dir=data, seed=7))
    registry.promote(settings, result.versions[LIGHTGBM], registry.CHAMPION, reason="benchmark", by="bench")
    registry.promote(settings, result.versions[MLP], registry.CHALLENGER, reason="benchmark", by="bench")
    marker.write_text(json.dumps(result.versions))


def _stage_means_ms(metrics_text: str) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    fallbacks = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "fraud_score_stage_duration_seconds_sum":
                sums[sample.labels["stage"]] = sample.value
            elif sample.name == "fraud_score_stage_duration_seconds_count":
                counts[sample.labels["stage"]] = sample.value
            elif sample.name == "fraud_fallbacks_total":
                fallbacks += sample.value
    means = {f"score_stage_{stage}_mean_ms": round(1e3 * sums[stage] / counts[stage], 3) for stage in sums}
    return means | {"score_fallbacks": fallbacks}


@contextmanager
def _running_service(settings: Settings) -> Iterator[str]:
    """A fresh embedded broker and one `fraudctl serve` process; yields the service's URL.

    Each phase gets its own: Tansu keeps the log in memory, and after the 60 s phase (32,500
    predictions) the first ramp step missed its SLO in 2 of 3 runs, while the same rate on a
    fresh broker passed. A disk-backed Kafka does not carry one phase's log into the next.
    """
    shutil.rmtree(settings.spool_dir, ignore_errors=True)  # a backlog would replay mid-run
    port = free_port()
    with EmbeddedBroker(settings, bootstrap="127.0.0.1:0") as broker:
        serving = broker.settings.model_copy(update={"registry_poll_seconds": 0})
        service = start_in_background(serving, port, BENCH_DIR / "serve.log")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            service.terminate()
            service.wait(30)


def run_benchmark() -> dict[str, Any]:
    settings = Settings(var_dir=BENCH_DIR / "var")
    _trained(settings)
    pool = transaction_pool(size=5_000, seed=7, data_dir=settings.var_dir / "data")
    with _running_service(settings) as url:
        steady = run_load(url, RATE, DURATION_S, WARMUP_S, SLO_MS, pool)
        stages = _stage_means_ms(httpx.get(f"{url}/metrics").text)
    with _running_service(settings) as url:
        # A rate must miss twice: on this VM a 10 s step now and then catches a stall of the
        # whole machine (seconds, with the server's own handler times all under 5 ms).
        saturation = ramp(
            url, RAMP_START, RAMP_STEP_S, 2.0, SATURATION_SLO_MS, RAMP_FACTOR, transactions=pool, attempts=2
        ).as_dict()
    steady_dict = steady.as_dict()
    return {
        "score_p99_ms_at_500rps": steady_dict["p99_ms"],
        "score_errors_at_500rps": steady_dict["errors"],
        "score_p50_ms_at_500rps": steady_dict["p50_ms"],
        "score_p999_ms_at_500rps": steady_dict["p999_ms"],
        "score_max_ms_at_500rps": steady_dict["max_ms"],
        "score_achieved_rps_at_500rps": steady_dict["achieved_rps"],
        **stages,
        "score_saturation_rps": round(saturation["max_rps_meeting_slo"] or 0, 1),
        "score_saturation_slo_p99_ms": SATURATION_SLO_MS,
        "score_ramp": [
            {k: round(step[k], 1) for k in ("target_rps", "achieved_rps", "p99_ms", "errors")}
            for step in saturation["ramp"]
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run_benchmark(), indent=2))
