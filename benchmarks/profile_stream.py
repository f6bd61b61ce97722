"""Profile the stream processor in one process: pre-publish N transactions, then consume them.

Not a benchmark with an SLO (see `bench_stream` for that): a smaller, repeatable run to see
where the processor's time goes. The gateway publishes everything first, so the figure is
the processor's own rate, events consumed / (processing seconds − the idle wait).

    python -m benchmarks.profile_stream [--transactions 50000] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import shutil
import time

from benchmarks.bench_stream import BENCH_DIR, _dataset
from core.settings import Settings
from pipelines.broker import EmbeddedBroker
from pipelines.replay import replay

IDLE_EXIT_S = 2.0


class GcClock:
    """Seconds spent in the cyclic garbage collector, per generation."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=50_000)
    parser.add_argument("--profile", help="write a cProfile of the processing to this file")
    args = parser.parse_args()

    from pipelines.stream import StreamProcessor

    data_dir = _dataset()
    var_dir = BENCH_DIR / "profile"
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    with EmbeddedBroker(Settings(var_dir=var_dir), bootstrap="127.0.0.1:0") as broker:
        settings = Settings(var_dir=var_dir, kafka_bootstrap=broker.bootstrap, feast_project="bench_profile")
        published = replay(data_dir, settings, rps=0, limit=args.transactions)
        if published.failed:
            raise RuntimeError(f"replay failed: {published.first_error}")
        processor = StreamProcessor(settings)
        gc_clock = GcClock()
        profiler = cProfile.Profile() if args.profile else None
        started = time.monotonic()
        if profiler:
            profiler.enable()
        summary = processor.run(idle_exit_s=IDLE_EXIT_S)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        elapsed = time.monotonic() - started
    events = summary.consumed.get("transactions", 0) + summary.consumed.get("labels", 0)
    busy = elapsed - IDLE_EXIT_S
    print(  # noqa: T201
        json.dumps(
            {
                "events": events,
                "seconds": round(busy, 2),
                "events_per_second": round(events / busy, 1),
                "rows_online": summary.rows_online,
                "balanced": summary.balanced(),
                "profiled": bool(profiler),
                "gc_seconds_by_generation": [round(x, 2) for x in gc_clock.seconds],
            }
        )
    )


if __name__ == "__main__":
    main()
