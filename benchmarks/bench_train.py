"""Benchmark: `fraudctl train` on ~1,000,000 simulated transactions, and single-row latency.

End to end in one fresh child process: backfill into an empty feature store (the store of
this benchmark, under var/bench/train/), point-in-time frame, both baselines, LightGBM,
MLP, ONNX export with the parity gate, MLflow logging and registration. Then single-row
latency of ONNX Runtime against LightGBM's `predict_proba`, and of the MLP's ONNX graph.

Training runs once (about 3.5 minutes on this machine): ``train_1m_seconds_runs`` lists
that one run. The single-row latencies are cheap (~1 s a run) and are measured in
``LATENCY_RUNS`` runs, each timing native, ONNX LightGBM and ONNX MLP back to back on the
same rows (so the machine's load hits all three alike); every figure is the median of the
runs' figures, with ``KEY_runs``. ``onnx_vs_native_speedup`` of a run is its native median
over its ONNX median.

    python -m benchmarks.bench_train
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import time
from typing import Any

import numpy as np

from benchmarks.bench_simulate import CARDS, DAYS, MERCHANTS, SEED
from benchmarks.isolation import run_in_fresh_process
from benchmarks.runs import with_runs

LATENCY_ROWS = 2_000
WARMUP = 200
LATENCY_RUNS = 5


def _latency_us(call: Any, rows: np.ndarray) -> np.ndarray:
    for row in rows[:WARMUP]:
        call(row)
    times = []
    for row in rows[WARMUP:]:
        started = time.perf_counter_ns()
        call(row)
        times.append((time.perf_counter_ns() - started) / 1e3)
    return np.array(times)


def _in_child(queue: multiprocessing.Queue) -> None:
    from core.settings import Settings
    from models.runtime import INPUT_NAME, OUTPUT_NAME, session
    from pipelines import simulate
    from pipelines.train import LIGHTGBM, MLP, TrainRequest, prepare_frames, train

    base = Settings()
    data = base.var_dir / "bench" / "data_1m"
    if not (data / "manifest.json").exists():
        simulate.run(data, simulate.SimulationParams(days=DAYS, cards=CARDS, merchants=MERCHANTS, seed=SEED))
    settings = Settings(var_dir=base.var_dir / "bench" / "train")
    shutil.rmtree(settings.var_dir, ignore_errors=True)  # an empty store: the backfill is timed too

    started = time.perf_counter()
    result = train(settings, TrainRequest(data_dir=data, seed=SEED))
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    frames = prepare_frames(settings, TrainRequest(data_dir=data))  # store is filled: no backfill
    rng = np.random.default_rng(SEED)
    rows = frames.x("test")[rng.choice(len(frames.test), LATENCY_ROWS + WARMUP, replace=False)][:, None, :]
    lgbm, mlp = result.candidates[LIGHTGBM], result.candidates[MLP]
    onnx_lgbm, onnx_mlp = session(lgbm.onnx_bytes), session(mlp.onnx_bytes)  # type: ignore[arg-type]
    latency_runs: dict[str, list[float]] = {}
    for _ in range(LATENCY_RUNS):
        native_us = _latency_us(lambda r: lgbm.native.classifier.predict_proba(r), rows)
        onnx_us = _latency_us(lambda r: onnx_lgbm.run([OUTPUT_NAME], {INPUT_NAME: r}), rows)
        mlp_us = _latency_us(lambda r: onnx_mlp.run([OUTPUT_NAME], {INPUT_NAME: r}), rows)
        one_run = {
            "onnx_vs_native_speedup": float(np.median(native_us) / np.median(onnx_us)),
            "native_lightgbm_predict_proba_p50_us": float(np.percentile(native_us, 50)),
            "native_lightgbm_predict_proba_p99_us": float(np.percentile(native_us, 99)),
            "onnx_lightgbm_p50_us": float(np.percentile(onnx_us, 50)),
            "onnx_lightgbm_p99_us": float(np.percentile(onnx_us, 99)),
            "onnx_mlp_p50_us": float(np.percentile(mlp_us, 50)),
            "onnx_mlp_p99_us": float(np.percentile(mlp_us, 99)),
        }
        for key, value in one_run.items():
            latency_runs.setdefault(key, []).append(value)
    latencies: dict[str, Any] = {}
    for key, values in latency_runs.items():
        latencies |= with_runs(key, values, ndigits=1)
    steps = {f"train_step_{k}_seconds": round(v, 2) for k, v in result.seconds.items()}
    queue.put(
        {
            **with_runs("train_1m_seconds", [seconds], ndigits=1),
            "train_1m_peak_memory_mb": round(peak_kib / 1024, 1),
            "train_transactions": len(frames.train) + len(frames.valid) + len(frames.test),
            **steps,
            **latencies,
            **{
                f"{name}_test_average_precision": round(m["average_precision"], 4)
                for name, m in result.metrics.items()
            },
            **{f"{name}_test_roc_auc": round(m["roc_auc"], 4) for name, m in result.metrics.items()},
            # Each model minus each baseline with its paired bootstrap interval (train's table).
            **{
                f"{name}_{key}": round(value, 4)
                for name, m in result.metrics.items()
                for key, value in m.items()
                if "_diff_vs_" in key
            },
        }
    )


def run_benchmark() -> dict[str, Any]:
    """Train both models end to end on ~1M transactions in a fresh child process."""
    return run_in_fresh_process(_in_child, timeout_s=3_600)


if __name__ == "__main__":
    print(json.dumps(run_benchmark()))
