"""Benchmark: the scoring service under open-loop load, one process, on this machine.

Setup (cached under var/bench/score): a simulated dataset, its features backfilled into
Feast (SQLite online store) with the last day held back from the online store, LightGBM
champion and MLP challenger trained and registered. The traffic is that held-back day,
with its own event times (`services.loadtest.transaction_pool`): cards are scored against
the history they had, fraud scenarios come in the data's proportions, and 2 % are sent as
new cards. Each phase then gets a fresh embedded broker and one `fraudctl serve` process
(its own interpreter, as in production) with shadow scoring and the prediction log on,
and `fraudctl loadtest`'s open-loop client in this process, on the same two cores:

1. 500 req/s for 60 s (after a 5 s warm-up): p50 / p99 / p99.9 and errors
   (`score_p99_ms_at_500rps`, `score_errors_at_500rps`; DESIGN.md: p99 ≤ 5 ms, no errors),
   and where the time goes: mean stage timings from the service's own histograms.
2. 1,000 req/s for 60 s, the same (`score_p99_ms_at_1000rps`).
3. Saturation: rates rising by 8 % from 1,000 req/s until a rate misses p99 ≤ 50 ms
   twice in a row; the last passing rate is `score_saturation_rps`.

Every phase records what its traffic exercised: the share of requests scored with the
card's stored history, the decision mix and who decided; and beside them the champion's
decision mix on the same transactions' training vectors.

    python -m benchmarks.bench_score
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from core.settings import PROJECT_ROOT, Settings
from models import registry
from pipelines import simulate
from pipelines.backfill import backfill, backfill_record
from pipelines.broker import EmbeddedBroker
from pipelines.train import LIGHTGBM, MLP, TrainRequest, train
from services.loadgen import LoadResult
from services.loadtest import ramp, run_load, training_decision_mix, transaction_pool
from services.serve import free_port, start_in_background

BENCH_DIR = PROJECT_ROOT / "var" / "bench" / "score"
DATA = simulate.SimulationParams(days=28, cards=2_000, merchants=300, seed=7)
HOLD_BACK_DAYS = 1
DURATION_S, WARMUP_S, SLO_MS = 60.0, 5.0, 5.0
SATURATION_SLO_MS, RAMP_START, RAMP_FACTOR, RAMP_STEP_S = 50.0, 1000.0, 1.08, 10.0
SETUP_VERSION = 2  # bump when the setup changes: a cached setup of another version is redone


def _trained(settings: Settings) -> pd.Timestamp:
    """Simulate, backfill (last day held back), train once; returns the online store's cut.

    Later runs reuse the registry and the store (delete var/bench/score to redo).
    """
    marker = settings.var_dir / "trained.json"
    record = backfill_record(settings)
    if marker.exists() and json.loads(marker.read_text()).get("setup") == SETUP_VERSION and record:
        return pd.Timestamp(record["online_as_of"])
    shutil.rmtree(settings.var_dir, ignore_errors=True)
    data = settings.var_dir / "data"
    simulate.run(data, DATA, progress=True)
    cut = backfill(data, settings, progress=True, hold_back_days=HOLD_BACK_DAYS).online_as_of
    assert cut is not None
    result = train(settings, TrainRequest(data_dir=data, seed=7))  # the store holds `data`: no re-backfill
    registry.promote(settings, result.versions[LIGHTGBM], registry.CHAMPION, reason="benchmark", by="bench")
    registry.promote(settings, result.versions[MLP], registry.CHALLENGER, reason="benchmark", by="bench")
    marker.write_text(json.dumps({"setup": SETUP_VERSION, "versions": result.versions}))
    return cut


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


def _traffic(result: LoadResult | dict[str, Any], prefix: str) -> dict[str, Any]:
    values = result if isinstance(result, dict) else result.as_dict()
    return {
        f"{prefix}_card_history_share": values["card_history_share"],
        f"{prefix}_decision_mix": values["decision_mix"],
        f"{prefix}_served_by_mix": values["served_by_mix"],
    }


def _steady(url: str, rps: float, pool: Any) -> dict[str, Any]:
    result = run_load(url, rps, DURATION_S, WARMUP_S, SLO_MS, pool).as_dict()
    key = f"{rps:.0f}rps"
    return {
        f"score_p99_ms_at_{key}": result["p99_ms"],
        f"score_errors_at_{key}": result["errors"],
        f"score_p50_ms_at_{key}": result["p50_ms"],
        f"score_p999_ms_at_{key}": result["p999_ms"],
        f"score_max_ms_at_{key}": result["max_ms"],
        f"score_achieved_rps_at_{key}": result["achieved_rps"],
        **_traffic(result, f"score_at_{key}"),
    }


def run_benchmark() -> dict[str, Any]:
    settings = Settings(var_dir=BENCH_DIR / "var")
    cut = _trained(settings)
    pool = transaction_pool(data_dir=settings.var_dir / "data", after=cut.to_pydatetime())
    with _running_service(settings) as url:
        at_500 = _steady(url, 500.0, pool)
        stages = _stage_means_ms(httpx.get(f"{url}/metrics").text)
    with _running_service(settings) as url:
        at_1000 = _steady(url, 1000.0, pool)
    with _running_service(settings) as url:
        # A rate must miss twice: on this VM a 10 s step now and then catches a stall of the
        # whole machine (seconds, with the server's own handler times all under 5 ms).
        saturation = ramp(
            url, RAMP_START, RAMP_STEP_S, 2.0, SATURATION_SLO_MS, RAMP_FACTOR, transactions=pool, attempts=2
        ).as_dict()
    in_training = training_decision_mix(settings, pool)
    return {
        **at_500,
        **stages,
        **at_1000,
        "score_slo_p99_ms": SLO_MS,
        "score_saturation_rps": round(saturation["max_rps_meeting_slo"] or 0, 1),
        "score_saturation_slo_p99_ms": SATURATION_SLO_MS,
        **_traffic(saturation, "score_saturation"),
        "score_ramp": [
            {
                k: step[k] if step[k] is None else round(step[k], 1)
                for k in ("target_rps", "achieved_rps", "p99_ms", "errors")
            }
            for step in saturation["ramp"]
        ],
        "score_pool": pool.describe(),
        "score_training_decision_mix": None if in_training is None else in_training["decision_mix"],
    }


if __name__ == "__main__":
    print(json.dumps(run_benchmark(), indent=2))
