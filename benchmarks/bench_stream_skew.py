"""Benchmark: how much training–serving skew the stream's freshness causes at full speed.

The design-round question: the scoring service reads features the stream processor keeps
fresh, and a transaction is scored before it is published, so a card's next transaction
sees its previous one only if the processor has written it by then. How many scored
vectors differ from training's when the gateway sends as fast as it can?

Each run, on a fresh broker, Feast store and processor (`benchmarks.stream_fed_scoring`, the
harness of `tests/integration/test_scoring_skew_stream.py`): the history up to day L-3
08:00 is streamed, then the next 24 hours (522 transactions, one midnight) are scored at
the service and published by `replay --score` at full speed (one request at a time, as a
gateway does). The service, the processor, the broker and the gateway each run in their
own process on this machine; the service has its production feature budget. Each vector
scored is compared, feature by feature, with the vector training built for the same
transaction: the share that differs, and from which state (card, device, merchant,
request), is reported. Merchant rows go stale only after midnight: the day's rows are
written two hops after the day's first event reaches the processor, and the transactions
scored before that have none (`stream_skew_merchant_stale_*`).

This is a benchmark and not (only) a test because the figure depends on this machine and
its load (the processor's freshness against the gateway's rate): it is a measurement to
compare across runs, with the machine it came from. The test asserts what holds anyway:
the mismatches are all explained by freshness, and at a pace slower than it there are none.

    python -m benchmarks.bench_stream_skew        # prints the figures and per-feature details
    fraudctl bench --only stream_skew             # writes benchmarks/results/stream_skew.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import uuid
from typing import Any

import pandas as pd

from benchmarks import stream_fed_scoring as harness
from core.dataset import read_transactions
from core.features import MODEL_FEATURES
from core.settings import PROJECT_ROOT, Settings
from models import registry
from pipelines import simulate
from pipelines.broker import EmbeddedBroker
from pipelines.train import LIGHTGBM, MLP, TrainRequest, prepare_frames, train

BENCH_DIR = PROJECT_ROOT / "var" / "bench" / "stream_skew"
# The skew tests' dataset (tests/integration/scoring_support.py SERVICE_DATA), so the test's
# full-speed phase and this benchmark look at the same cards.
DATA = simulate.SimulationParams(days=28, cards=400, merchants=50, seed=5, fraud_rate=0.02)
DAYS_BEFORE_LAST, CUT_HOUR = 3, 8
RUNS = 3


def _train(settings: Settings) -> pd.DataFrame:
    """Simulate, train and register (champion LightGBM); the training frames by transaction id."""
    data = settings.var_dir / "data"
    simulate.run(data, DATA)
    result = train(settings, TrainRequest(data_dir=data, seed=3))
    registry.promote(settings, result.versions[LIGHTGBM], registry.CHAMPION, reason="bench", by="bench")
    registry.promote(settings, result.versions[MLP], registry.CHALLENGER, reason="bench", by="bench")
    frames = prepare_frames(settings, TrainRequest(data_dir=data, seed=3))
    return pd.concat([frames.train, frames.valid, frames.test], ignore_index=True).set_index("transaction_id")


def _one_run(trained: Settings, training: pd.DataFrame, n: int) -> dict[str, Any]:
    data = trained.var_dir / "data"
    times = read_transactions(data)["event_time"]
    cut = times.max().floor("D") - pd.Timedelta(days=DAYS_BEFORE_LAST) + pd.Timedelta(hours=CUT_HOUR)
    base = Settings(
        var_dir=BENCH_DIR / f"run-{n}",
        feast_project=f"bench_skew_{uuid.uuid4().hex[:8]}",
        mlflow_tracking_uri=trained.mlflow_tracking_uri,
        registry_poll_seconds=0,
    )
    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker:
        phase = harness.Phase("full speed", cut + pd.Timedelta(days=1), rps=0)
        result = harness.run(data, broker.settings, cut, [phase])
    full = result.phases[0]
    ids = full.scored["transaction_id"].tolist()
    mismatch = harness.vector_mismatches(result.predictions, training, ids)
    by_source = harness.mismatch_sources(mismatch).mean()
    served_by = pd.Series([result.predictions[t]["served_by"] for t in ids]).value_counts()
    # The day's merchant rows are written two hops after the day's first event is published;
    # every transaction of the day scored before that has none (see the test's docstring).
    day = full.scored.loc[full.scored["event_time"] >= full.scored["event_time"].max().floor("D")]
    day_ids = day["transaction_id"].tolist()
    merchant_stale = [t for t in day_ids if mismatch.loc[t, harness.MERCHANT_FED].any()]
    scored_at = {t: pd.Timestamp(result.predictions[t]["scored_at"]) for t in day_ids}
    return {
        "transactions": len(ids),
        "share": float(mismatch.any(axis=1).mean()),
        "by_source": by_source.to_dict(),
        "by_feature": {f: int(n) for f, n in mismatch.sum().items() if n},
        "fallback_share": float(1 - served_by.get("champion", 0) / len(ids)),
        "gateway_rps": full.replay.achieved_rps,
        "freshness_p50": max(
            full.freshness_quantile_bound_seconds(v, 0.5) or 0 for v in full.freshness_buckets
        ),
        "freshness_max": max(full.freshness_bound_seconds(v) for v in full.freshness_buckets),
        "merchant_stale": len(merchant_stale),
        "merchant_stale_are_the_days_first": merchant_stale == day_ids[: len(merchant_stale)],
        # wall-clock seconds from scoring the day's first transaction to the last one without its row
        "merchant_stale_seconds": max(
            ((scored_at[t] - scored_at[day_ids[0]]).total_seconds() for t in merchant_stale), default=0.0
        ),
        "seconds": result.seconds,
    }


def run_benchmark(runs: int = RUNS) -> dict[str, Any]:
    """The figures (numbers, `_runs` lists, and the mismatches per feature), for `benchmarks.run`."""
    figures, details = measure(runs)
    return figures | {"stream_skew_mismatches_by_feature_runs": details["mismatches_by_feature_runs"]}


def measure(runs: int = RUNS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, details): details are per feature and per run, for the result file."""
    shutil.rmtree(BENCH_DIR, ignore_errors=True)
    trained = Settings(var_dir=BENCH_DIR / "train")
    training = _train(trained)
    results = [_one_run(trained, training, n) for n in range(runs)]

    def median(key: str, source: str | None = None) -> float:
        values = [r[key] if source is None else r["by_source"][source] for r in results]
        return round(statistics.median(values), 4)

    metrics: dict[str, Any] = {
        "stream_skew_mismatch_share": median("share"),
        "stream_skew_mismatch_share_runs": [round(r["share"], 4) for r in results],
        "stream_skew_transactions": results[0]["transactions"],
        **{f"stream_skew_{s}_mismatch_share": median("by_source", s) for s in ("card", "device", "merchant")},
        "stream_skew_request_mismatch_share": median("by_source", "request"),
        "stream_skew_fallback_share": median("fallback_share"),
        "stream_skew_gateway_rps": round(median("gateway_rps"), 1),
        "stream_skew_gateway_rps_runs": [round(r["gateway_rps"], 1) for r in results],
        "stream_skew_freshness_p50_bound_seconds": median("freshness_p50"),
        "stream_skew_freshness_max_bound_seconds": max(r["freshness_max"] for r in results),
        "stream_skew_merchant_stale_after_midnight": median("merchant_stale"),
        "stream_skew_merchant_stale_after_midnight_runs": [r["merchant_stale"] for r in results],
        "stream_skew_merchant_stale_are_the_days_first": all(
            r["merchant_stale_are_the_days_first"] for r in results
        ),
        "stream_skew_merchant_stale_seconds_max": round(max(r["merchant_stale_seconds"] for r in results), 3),
    }
    details = {
        "mismatches_by_feature_runs": [r["by_feature"] for r in results],
        "step_seconds_runs": [r["seconds"] for r in results],
        "features": len(MODEL_FEATURES),
    }
    return metrics, details


if __name__ == "__main__":
    figures, details = measure()
    print(json.dumps(figures | {"details": details}, indent=2))
