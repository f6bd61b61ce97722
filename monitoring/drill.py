"""`fraudctl drill`: the closed loop end to end, on demand, in the embedded profile.

Each drill builds its own small world under `var/drills/NAME/` and runs the real parts:
the Tansu broker, `fraudctl stream` and `fraudctl serve` in their own processes, and the
monitor (with every hook of `monitoring.loop`) in this one. Days are replayed through the
scoring service one slice at a time; after each slice the drill waits until the monitor
has read everything and any retraining it started has finished. Event time thus stands
still while a model trains (minutes of wall time on this machine), as if training were
instant: the detection delay is reported in event-time hours, and it does not depend on
how fast this machine trains. Within a slice, a card's next payment is scored only once
the stream processor has written its previous one (`replay(wait_readable=...)`), as real
time would have it: otherwise the features served would be staler the busier the machine.

    drift --kind amount-shift|new-merchant-mix|new-fraud-pattern   the loop detects and adapts
    drift --kind none                                              the false-alarm control
    bad-challenger                                                 the guard stops a bad canary
    bad-champion                                                   the monitor rolls back
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer

from core.feature_engine import CARD_VIEW
from core.settings import Settings, get_settings
from models import registry
from monitoring import audit
from monitoring.monitor import Monitor

DRIFT_KINDS = ("amount-shift", "new-merchant-mix", "new-fraud-pattern", "none")


@dataclass(frozen=True)
class DrillWorld:
    """The drills' world: small enough to train in a minute, large enough for 12 h windows.

    ~1,000 transactions a day; the champion trains on the days before `replay_from`
    (labels as known then), the replay covers `lead_days` clean days and then the drift.
    """

    cards: int = 600
    merchants: int = 100
    # 56 days before the replay: the validation window (the reference sample's days) starts
    # after day 35, when the 30-day card histories and the merchants' 28-day counts lagged
    # 7 days are full. 16 drifted days: 3 windows to alarm; retraining once the training
    # window (which ends one label delay before `now`) holds a drifted day; a day of shadow;
    # two canary steps of a day each; promotion.
    days: int = 74
    drift_start: int = 58  # day index: the drift starts at midnight of that day
    lead_days: int = 1  # clean days replayed before it (the no-alarm baseline of the page)
    seed: int = 7
    # 2 %: the retraining's holdout (the last 7 days, labels as known then: ~12 % of its
    # fraud) must hold enough labelled fraud for the gate (~15 here).
    fraud_rate: float = 0.02
    window_hours: float = 24.0
    slice_hours: float = 12.0
    retrain_gap_days: float = 7.0
    # 6 weeks: with 3 of them, labels as known at `now` (the last weeks half reported) left the
    # candidate worse than the champion on ranking (paired ROC-AUC interval below 0, measured).
    retrain_train_days: float = 42.0
    # "new-fraud-pattern": its fraud as a share of the rest. At the simulator's 0.25, three
    # matured days (a third of their labels in) hide the excess in the labels' own noise
    # (z ~1.5); at 1.0 the new pattern doubles the fraud, and the labels see it (z ~6).
    new_pattern_share: float = 1.0

    @property
    def replay_from_day(self) -> int:
        return self.drift_start - self.lead_days


# The guard drills need a day of clean traffic and a few days for the guard, no drift.
SHORT_WORLD = DrillWorld(days=62)


def guard_config() -> Any:
    """The guard at the drill's scale: ~1,000 decisions a day, so steps of a day, 100 rows an arm.

    After a drift, a retrained challenger is *meant* to decide differently from the drifted
    champion (in the amount-shift drill the champion reviews 5.4 % of traffic, the retrained
    model 2.6 %), so the shifts in review and decline rates, the flip rate and the score KS
    are reported but not critical here, with wide bounds: measured, with the defaults the
    retrained challenger stayed marginal in shadow and was never given a share. What stays
    critical is what says broken rather than different: errors, latency, the rank correlation
    with the champion (a model trained on shuffled labels: 0.19 in the bad-challenger drill,
    against >= 0.3 required) and, once labels mature, precision and cost.
    """
    from monitoring.canary import GuardConfig

    return GuardConfig(
        steps=(10.0, 50.0),
        hold=timedelta(hours=20),
        min_rows=100,
        max_marginal=timedelta(days=2),
        watch_hold=timedelta(hours=20),
        min_matured_rows=200,
        review_rel=3.0,
        decline_rel=3.0,
        flip_max=0.1,
        ks_max=0.6,
        critical=frozenset({"errors", "latency", "rank_correlation", "precision", "cost"}),
    )


@dataclass
class DrillReport:
    drill: str
    kind: str | None = None
    drift_start: str | None = None
    drift_detected: bool = False
    drifted_features: list[str] = field(default_factory=list)
    detection_hours: float | None = None
    # "drift" (the inputs or scores moved) or "missed_fraud" (the matured labels found fraud
    # the scores did not expect: a new pattern moves no input).
    detected_by: str | None = None
    # Per matured day of the first champion: the fraud its scores expected among the passed
    # transactions, and the fraud the labels found (scaled by the share of labels in).
    estimate_vs_labels: list[dict[str, Any]] = field(default_factory=list)
    retrained: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)
    champion_before: str | None = None
    champion_after: str | None = None
    canary_stopped: bool = False
    rolled_back: bool = False
    passed: bool = False
    verdict: str = ""
    matured_before: list[dict[str, Any]] = field(default_factory=list)
    matured_after: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Drill:
    """The running parts of one drill, and the steps every drill shares."""

    def __init__(
        self, name: str, base: Settings, world: DrillWorld, say: Callable[[str], None], prepared: bool = False
    ) -> None:
        """`prepared`: `prepare_drift` built this drill's world and champion already; keep them."""
        import httpx

        from services.serve import free_port

        self.name, self.world, self.say = name, world, say
        folder = base.var_dir / "drills" / name
        self.prepared = prepared and (folder / PREPARED_MARKER).exists()
        if folder.exists() and not self.prepared:
            shutil.rmtree(folder)
        self.settings = base.model_copy(
            update={
                "var_dir": folder,
                "data_dir": folder / "data",
                # Derived from var_dir when settings are built, so set again for the drill's own.
                "mlflow_tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"
                if base.profile == "embedded"
                else base.mlflow_tracking_uri,
                "kafka_bootstrap": f"127.0.0.1:{free_port()}",
                "serve_port": free_port(),
                "scoring_urls": [],
                "drift_window_hours": world.window_hours,
                "drift_min_rows": 300,
                "registry_poll_seconds": 1.0,
                "maturity_days": 7.0,
                "retrain_gap_days": world.retrain_gap_days,
                "retrain_train_days": world.retrain_train_days,
            }
        )
        self.settings.scoring_urls = [f"http://127.0.0.1:{self.settings.serve_port}"]
        self.report = DrillReport(drill=name)
        self.monitor: Monitor | None = None
        self._thread: threading.Thread | None = None
        self._processes: list[subprocess.Popen] = []
        self._http = httpx.Client()  # the stream's /metrics, read every few ms at a barrier
        self._published = 0  # transactions published to the stream so far
        self._dataset: tuple[pd.DataFrame, pd.DataFrame] | None = None  # read once by `build`
        self._started = time.monotonic()

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        line = f"[{elapsed:5.0f} s] {text}"
        self.report.steps.append(line)
        self.say(line)

    # --- the world --------------------------------------------------------------------------
    def day(self, index: int) -> pd.Timestamp:
        from pipelines.simulate import SimulationParams

        return pd.Timestamp(SimulationParams(1, 1, 10, 0).start, tz="UTC") + pd.Timedelta(days=index)

    def build(self, drift: str | None) -> None:
        """Simulate, and fill the feature store up to the replay (`running` trains the champion)."""
        from core.dataset import read_labels, read_transactions
        from pipelines import simulate
        from pipelines.backfill import backfill

        w, s = self.world, self.settings
        assert s.data_dir is not None
        if self.prepared:
            self.step(
                f"world prepared ahead: {w.days} days, {w.cards:,} cards"
                + (f", drift {drift} from day {w.drift_start}" if drift else "")
                + f"; feature store backfilled up to {self.day(w.replay_from_day):%Y-%m-%d}"
            )
            self._dataset = (read_transactions(s.data_dir), read_labels(s.data_dir))
            return
        params = simulate.SimulationParams(
            w.days, w.cards, w.merchants, w.seed, fraud_rate=w.fraud_rate,
            drift=drift, drift_start=w.drift_start if drift else None,
            new_pattern_share=w.new_pattern_share,
        )  # fmt: skip
        simulate.run(s.data_dir, params)
        self.step(
            f"simulated {w.days} days, {w.cards:,} cards"
            + (f", drift {drift} from day {w.drift_start}" if drift else "")
        )
        backfill(s.data_dir, s, hold_back_days=w.days - w.replay_from_day)
        self.step(
            f"feature store backfilled up to {self.day(w.replay_from_day):%Y-%m-%d} (the replay starts there)"
        )
        # Read once: every slice of the replay publishes from them.
        self._dataset = (read_transactions(s.data_dir), read_labels(s.data_dir))

    def _train_champion(self) -> None:
        from pipelines.train import LIGHTGBM, TrainRequest, train

        w, s = self.world, self.settings
        assert s.data_dir is not None
        replay_from = self.day(w.replay_from_day)
        if self.prepared:
            version = registry.current_version(registry.connect(s), registry.CHAMPION)
            assert version is not None, "a prepared drill has its champion"
            self.report.champion_before = version
            self.step(f"champion: version {version}, trained ahead on the days before {replay_from:%Y-%m-%d}")
            return
        result = train(
            s,
            TrainRequest(
                data_dir=s.data_dir, models=(LIGHTGBM,), now=replay_from.to_pydatetime(), seed=w.seed
            ),
        )
        version = result.versions[LIGHTGBM]
        registry.promote(
            s, version, registry.CHAMPION, reason="drill: the champion before the drift", by="drill"
        )
        self.report.champion_before = version
        self.step(f"champion: version {version}, trained on the days before {replay_from:%Y-%m-%d}")

    # --- the running parts ----------------------------------------------------------------------
    @contextmanager
    def running(self) -> Iterator[Drill]:
        from monitoring.loop import default_hooks
        from pipelines.broker import EmbeddedBroker
        from services.serve import free_port, start_in_background

        s = self.settings
        logs = s.var_dir / "logs"
        with EmbeddedBroker(s):
            try:
                self._stream_port = free_port()
                stream_args = ["stream", "--metrics-port", str(self._stream_port)]
                self._processes.append(self._spawn(stream_args, logs / "stream.log"))
                # The monitor joins its consumer group (~10 s on Tansu) and the stream process
                # reads the history while this one trains: two cores, three jobs that wait.
                self.monitor = Monitor(s, hooks=default_hooks(s, guard_config()), checkpoint_interval_s=2.0)
                self._thread = threading.Thread(target=self.monitor.run, name="monitor", daemon=True)
                self._thread.start()
                history = self._publish_history()
                self._train_champion()
                self._processes.append(start_in_background(s, s.serve_port, logs / "serve.log"))
                self._wait_stream_read(history)
                self.step(f"stream processor and scoring service up ({s.scoring_urls[0]})")
                from monitoring.http import start_monitor_server, stop_monitor_server

                page, page_thread = start_monitor_server(
                    0, self.monitor.metrics.registry, self.monitor.snapshot, s.reports_dir
                )
                self.step(f"monitor running; its page: {page.url}/")
                try:
                    yield self
                finally:
                    stop_monitor_server(page, page_thread)
            finally:
                # All at once: the processes flush and exit while the monitor finishes its work.
                for process in self._processes:
                    process.terminate()
                if self.monitor is not None:
                    self.monitor.stop()
                if self._thread is not None:
                    self._thread.join(120)
                for process in self._processes:
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
                self._http.close()

    def _publish_history(self) -> int:
        """Publish the days before the replay (unscored), so the stream holds every card's history.

        The online store was backfilled up to the replay, but the stream processor keeps its
        own state, rebuilt from the topic: without the earlier days in it, the first write of
        each card would replace its stored 30-day history with a few hours' (measured: every
        7- and 30-day feature then reads as drifted). Returns the transactions published.
        """
        from pipelines.replay import replay

        assert self.settings.data_dir is not None
        until = self.day(self.world.replay_from_day)
        published = replay(
            self.settings.data_dir, self.settings, until=until, labels_after_end=False, dataset=self._dataset
        )
        self._published = published.transactions  # the stream's written count, once caught up
        return published.transactions

    def _wait_stream_read(self, published: int, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._stream_consumed() < published:
            if time.monotonic() > deadline:
                raise TimeoutError("the stream processor did not read the history in time")
            time.sleep(0.5)
        self.step(f"stream processor read the {published:,} transactions before the replay")

    def _stream_consumed(self) -> float:
        return self._stream_sample("fraud_stream_messages_consumed_total", {"topic": "transactions"})

    def _stream_readable(self) -> float:
        """Transactions whose card features the stream processor has written online."""
        return self._stream_sample("fraud_stream_feature_freshness_seconds_count", {"view": CARD_VIEW})

    def _wait_readable(self, count: float, base: float = 0.0, timeout_s: float = 60.0) -> None:
        count += base
        deadline = time.monotonic() + timeout_s
        while self._stream_readable() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stream processor did not write {count:,.0f} transactions in time")
            time.sleep(0.01)

    def _stream_sample(self, name: str, labels: dict[str, str]) -> float:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            # name[] restricts the exposition to that one series: the whole page costs the
            # stream process ~10 ms of its loop, this a fraction of one.
            url = f"http://127.0.0.1:{self._stream_port}/metrics"
            text = self._http.get(url, params={"name[]": name}, timeout=2).text
        except httpx.TransportError:
            return 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0

    def _spawn(self, args: list[str], log_path: Path) -> subprocess.Popen:
        import os

        env = os.environ | {
            "FRAUD_VAR_DIR": str(self.settings.var_dir),
            "FRAUD_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "FRAUD_MLFLOW_TRACKING_URI": self.settings.mlflow_tracking_uri,
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fraudctl = Path(sys.executable).parent / "fraudctl"
        with log_path.open("w") as log:
            return subprocess.Popen([str(fraudctl), *args], env=env, stdout=log, stderr=subprocess.STDOUT)

    def replay(
        self, start: pd.Timestamp, end: pd.Timestamp, until_done: Callable[[], bool] | None = None
    ) -> None:
        """Replay (start, end] in slices through the scoring service; after each, wait for the loop."""
        from pipelines.replay import replay

        assert self.settings.data_dir is not None
        cut = start
        while cut < end:
            nxt = min(end, cut + pd.Timedelta(hours=self.world.slice_hours))
            published_before = self._published
            summary = replay(
                self.settings.data_dir, self.settings, after=cut, until=nxt,
                score_url=self.settings.scoring_urls[0], labels_after_end=False,
                wait_readable=functools.partial(self._wait_readable, base=published_before),
                dataset=self._dataset,
            )  # fmt: skip
            self._published += summary.transactions
            if summary.score_errors:
                raise RuntimeError(f"scoring errors in the replay: {summary.score_errors}")
            self.wait_for_loop(summary.transactions)
            cut = nxt
            if until_done is not None and until_done():
                return

    def wait_for_loop(self, scored: int, timeout_s: float = 600.0) -> None:
        """Until the monitor has read what was scored and its work (windows, retraining) is done."""
        assert self.monitor is not None
        self._expected = getattr(self, "_expected", 0) + scored
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = self.monitor
            consumed = m.state.counts()["predictions"]  # distinct transactions kept so far
            busy = any(getattr(hook, "busy", lambda: False)() for hook in m.evaluator.hooks.values())
            if (
                consumed >= self._expected
                and not m.evaluator.pending(m.watermark(), m.earliest())
                and not busy
            ):
                return
            time.sleep(0.05)  # 34 slices a drill: a coarse poll adds seconds
        raise TimeoutError(f"the monitor did not catch up in {timeout_s:.0f} s")

    # --- the summary ---------------------------------------------------------------------------
    def _estimate_vs_labels(self) -> list[dict[str, Any]]:
        from monitoring import performance

        assert self.monitor is not None
        state, evaluator = self.monitor.state, self.monitor.evaluator
        watermark = self.monitor.watermark()
        if state.predictions.empty or watermark is None:
            return []
        now = evaluator.now(watermark)
        frame = performance.join_labels(state.predictions, state.labels, now)
        settings = performance.PerformanceSettings(maturity=timedelta(days=self.settings.maturity_days))
        days = performance.missed_fraud(frame, now, 10_000, settings, performance.GROUP_KEYS).reset_index()
        days = days[
            (days["served_by"] == "champion") & (days["model_version"] == str(self.report.champion_before))
        ]
        columns = ["expected_fraud", "labelled_fraud", "label_share", "found_fraud", "z"]
        return [
            {"day": row["day"].date().isoformat(), **{c: round(float(row[c]), 2) for c in columns}}
            for _, row in days.iterrows()
        ]

    def finish(self, passed: bool, verdict: str) -> DrillReport:
        r, s = self.report, self.settings
        assert self.monitor is not None
        evaluator = self.monitor.evaluator
        missed_at = evaluator.missed_fraud.raised_at
        alarms = {
            "drift": evaluator.drift_alarm_at,
            "missed_fraud": None if missed_at is None else pd.Timestamp(missed_at),
        }
        raised = sorted((at, by) for by, at in alarms.items() if at is not None)
        r.drift_detected = bool(raised)
        r.drifted_features = list(evaluator.drifted_features)
        if raised:
            first_at, r.detected_by = raised[0]
            if r.drift_start is not None:
                r.detection_hours = (first_at - pd.Timestamp(r.drift_start)) / pd.Timedelta(hours=1)
        r.estimate_vs_labels = self._estimate_vs_labels()
        r.actions = [e for e in audit.read(s) if e["actor"] == "monitor"]
        r.retrained = any(e["action"] == "retrain" for e in r.actions)
        r.canary_stopped = any(e["action"] == "canary_stop" for e in r.actions)
        r.rolled_back = any(e["action"] == "rollback" for e in r.actions)
        r.champion_after = registry.current_version(registry.connect(s), registry.CHAMPION)
        # Matured cohorts (maturity `maturity_days`, 7 in the drills) of each champion's decisions.
        from monitoring.page import records

        matured = records(evaluator.realised)
        r.matured_before = [m for m in matured if str(m.get("model_version")) == str(r.champion_before)]
        if r.champion_after != r.champion_before:
            r.matured_after = [m for m in matured if str(m.get("model_version")) == str(r.champion_after)]
        r.passed, r.verdict = passed, verdict
        r.seconds = round(time.monotonic() - self._started, 1)
        return r


PREPARED_MARKER = ".prepared"


def prepare_drift(kind: str, base: Settings, world: DrillWorld) -> None:
    """Build a drift drill's world and train its champion now, for `run_drift(prepared=True)`.

    The demo runs this in a process of its own while its first steps run on the other core:
    the drill then starts at its replay. Nothing here needs the broker.
    """
    drill = Drill(f"drift-{kind}", base, world, lambda _line: None)
    drill.build(None if kind == "none" else kind)
    drill._train_champion()
    (drill.settings.var_dir / PREPARED_MARKER).touch()


def prepare_drift_in_background(kind: str, base: Settings, world: DrillWorld) -> Any:
    """`prepare_drift` in a process of its own, its output in var/logs/; join it, check exitcode."""
    import multiprocessing

    log_path = base.var_dir / "logs" / f"drill-{kind}-prepare.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_prepare_logged, args=(kind, base, world, log_path), name=f"prepare-{kind}", daemon=True
    )
    process.start()
    return process


def _prepare_logged(kind: str, base: Settings, world: DrillWorld, log_path: Path) -> None:
    import logging
    import os

    with log_path.open("w") as log:  # the descriptors too: what C code prints goes there as well
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        prepare_drift(kind, base, world)


def run_drift(
    kind: str,
    base: Settings,
    world: DrillWorld,
    say: Callable[[str], None],
    until: str = "end",
    prepared: bool = False,
) -> DrillReport:
    """The drift drill: detect, retrain, shadow, canary, promote or stop; or, with 'none', nothing.

    `until` says when the replay stops: at the world's last day ("end"); once an alarm was
    raised ("detected": what a test of the detection needs); or once a retrained challenger
    was promoted or its canary stopped ("settled": the demo's story is told, and the days
    after it only mature the new champion's labels for the summary's matured metrics).
    `prepared`: `prepare_drift` built the world and trained the champion already.
    """
    if kind not in DRIFT_KINDS:
        raise ValueError(f"--kind must be one of {', '.join(DRIFT_KINDS)}, got {kind!r}")
    if until not in ("end", "detected", "settled"):
        raise ValueError(f"until must be end, detected or settled, got {until!r}")
    drill = Drill(f"drift-{kind}", base, world, say, prepared=prepared)
    drill.build(None if kind == "none" else kind)
    drift_start = drill.day(world.drift_start)
    drill.report.kind, drill.report.drift_start = kind, drift_start.isoformat()

    def done() -> bool:
        if until == "detected":
            assert drill.monitor is not None
            evaluator = drill.monitor.evaluator
            return evaluator.drift_alarm_at is not None or evaluator.missed_fraud.raised_at is not None
        champion = registry.current_version(registry.connect(drill.settings), registry.CHAMPION)
        stopped = any(e["action"] == "canary_stop" for e in audit.read(drill.settings))
        return stopped or champion != drill.report.champion_before

    with drill.running():
        start, end = drill.day(world.replay_from_day), drill.day(world.days)
        drill.replay(start, end, until_done=None if until == "end" else done)
        drill.step(f"{until}: the replay stops here" if until != "end" and done() else "replay done")
    report = drill.finish(False, "")
    if kind == "none":
        report.passed = not report.drift_detected and not report.retrained
        report.verdict = "no alarm and no retraining over the same span" if report.passed else "a false alarm"
    else:
        first_alarm = None if report.detection_hours is None else report.detection_hours >= 0
        report.passed = bool(first_alarm)
        by = "the drift alarm" if report.detected_by == "drift" else "the missed-fraud alarm (labels)"
        report.verdict = f"detected by {by} after it started" if report.passed else "not detected"
    return report


def served_champions(drill: Drill) -> list[str | None]:
    """The champion version every scoring process serves now (GET /v1/model)."""
    import httpx

    versions = []
    for url in drill.settings.scoring_urls:
        champion = httpx.get(f"{url}/v1/model", timeout=5).json()["champion"]
        versions.append(champion["version"] if champion else None)
    return versions


def _admin(drill: Drill, path: str, body: dict[str, Any] | None = None) -> None:
    """An operator's call to every scoring process (the drills' hand-made moves)."""
    import httpx

    headers = {"authorization": f"Bearer {drill.settings.admin_token}"}
    for url in drill.settings.scoring_urls:
        httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30).raise_for_status()


def run_bad_challenger(base: Settings, world: DrillWorld, say: Callable[[str], None]) -> DrillReport:
    """A challenger trained on shuffled labels is given a canary share by hand; the guard must stop it."""
    from monitoring.retrain import train_bad_challenger

    drill = Drill("bad-challenger", base, world, say)
    drill.build(None)
    start = drill.day(world.replay_from_day)
    with drill.running():
        drill.replay(start, start + pd.Timedelta(days=1))
        now = start + pd.Timedelta(days=1)
        bad = train_bad_challenger(drill.settings, now, data_dir=drill.settings.data_dir)
        drill.step(f"bad challenger: version {bad.version} (shuffled labels), registered without the gate")
        _admin(drill, "/admin/reload")
        _admin(drill, "/admin/canary", {"percent": 10.0})
        drill.step("an operator gives it 10 % of the cards (POST /admin/canary)")
        stopped = lambda: any(e["action"] == "canary_stop" for e in audit.read(drill.settings))  # noqa: E731
        drill.replay(now, drill.day(world.days), until_done=stopped)
        drill.step(
            "canary stopped by the guard" if stopped() else "replay done: the canary was never stopped"
        )
        percents = [httpx_get_percent(url) for url in drill.settings.scoring_urls]
    report = drill.finish(False, "")
    passed = (
        report.canary_stopped and report.champion_after == report.champion_before and set(percents) == {0.0}
    )
    report.passed = passed
    report.verdict = (
        "the guard stopped the bad canary; the champion is unchanged"
        if passed
        else f"canary stopped: {report.canary_stopped}, champion {report.champion_before} → "
        f"{report.champion_after}, shares {percents}"
    )
    return report


def httpx_get_percent(url: str) -> float:
    import httpx

    return float(httpx.get(f"{url}/v1/model", timeout=5).json()["canary_percent"])


def run_bad_champion(base: Settings, world: DrillWorld, say: Callable[[str], None]) -> DrillReport:
    """A bad version is promoted to champion by hand; the monitor must roll back, and serving follow."""
    from monitoring.retrain import train_bad_challenger

    drill = Drill("bad-champion", base, world, say)
    drill.build(None)
    start = drill.day(world.replay_from_day)
    with drill.running():
        # Past the end of the first window, so that the guard has seen the old champion serve.
        now = start + pd.Timedelta(days=2.5)
        drill.replay(start, now)
        bad = train_bad_challenger(drill.settings, now, data_dir=drill.settings.data_dir)
        registry.promote(
            drill.settings,
            str(bad.version),
            registry.CHAMPION,
            reason="drill: a bad promotion by hand",
            by="operator",
        )
        _admin(drill, "/admin/reload")
        drill.step(f"an operator promotes version {bad.version} (shuffled labels) to champion by hand")
        rolled_back = lambda: any(e["action"] == "rollback" for e in audit.read(drill.settings))  # noqa: E731
        drill.replay(now, drill.day(world.days), until_done=rolled_back)
        deadline = time.monotonic() + 30  # the services poll the registry every second
        while time.monotonic() < deadline and set(served_champions(drill)) != {drill.report.champion_before}:
            time.sleep(0.5)
        served = served_champions(drill)
        drill.step(
            f"{'rolled back' if rolled_back() else 'not rolled back'}; the scoring processes serve "
            f"version {', '.join(map(str, served))}"
        )
    report = drill.finish(False, "")
    report.passed = (
        report.rolled_back
        and report.champion_after == report.champion_before
        and set(served) == {report.champion_before}
    )
    report.verdict = (
        "the monitor rolled back to the previous champion, and every process serves it"
        if report.passed
        else f"rolled back: {report.rolled_back}, champion {report.champion_after}, served {served}"
    )
    return report


def summary_table(report: DrillReport) -> Any:
    """The drill's outcome for a person: what was detected, what the loop did, the verdict."""
    from rich.table import Table

    table = Table(title=f"drill {report.drill}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    if report.kind is not None:
        table.add_row("drift", f"{report.kind} from {report.drift_start}")
        hours = "–" if report.detection_hours is None else f"{report.detection_hours:.0f} h of event time"
        by = {"drift": "drift alarm", "missed_fraud": "missed-fraud alarm"}.get(report.detected_by or "", "")
        detected = f"yes, {by}, {hours}" if report.drift_detected else "no"
        table.add_row("detected", detected)
        table.add_row("drifted features", ", ".join(report.drifted_features) or "–")
        if report.estimate_vs_labels and report.drift_start is not None:
            table.add_row("scores vs labels", _estimate_vs_labels_line(report))
    table.add_row("retrained", "yes" if report.retrained else "no")
    table.add_row("champion", f"{report.champion_before} → {report.champion_after}")
    table.add_row("canary stopped", "yes" if report.canary_stopped else "no")
    table.add_row("rolled back", "yes" if report.rolled_back else "no")
    for entry in report.actions:
        table.add_row(f"  {entry['action']}", str(entry["reason"]))
    table.add_row("verdict", f"{'PASSED' if report.passed else 'FAILED'}: {report.verdict}")
    table.add_row("wall time", f"{report.seconds:.0f} s")
    return table


def _estimate_vs_labels_line(report: DrillReport) -> str:
    """Fraud a day among the passed transactions of the matured days, before and after the drift."""
    assert report.drift_start is not None
    start = pd.Timestamp(report.drift_start).date().isoformat()
    parts = []
    for name, days in (
        ("before", [d for d in report.estimate_vs_labels if d["day"] < start]),
        ("after", [d for d in report.estimate_vs_labels if d["day"] >= start]),
    ):
        if days:
            expected = sum(d["expected_fraud"] for d in days) / len(days)
            found = sum(d["found_fraud"] for d in days) / len(days)
            parts.append(
                f"{name} the drift ({len(days)} matured days): {expected:.1f} expected, "
                f"{found:.1f} found a day"
            )
    return "; ".join(parts) or "–"


def print_report(report: DrillReport) -> None:
    from rich.console import Console

    Console().print(summary_table(report))


def cli_drift(
    kind: Annotated[
        str, typer.Option("--kind", help="amount-shift, new-merchant-mix, new-fraud-pattern or none.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Drift drill: simulate a drift, detect it, retrain, canary, promote; 'none' is the control.

    amount-shift and new-merchant-mix move the inputs: the drift alarm names the features.
    new-fraud-pattern moves none: the missed-fraud alarm sees it once the drifted days'
    labels mature (the summary lists the fraud the scores expected against the labels').
    Each drill takes 3-9 minutes here.

    Example: fraudctl drill drift --kind amount-shift --json
    """
    _run_cli(lambda settings, say: run_drift(kind, settings, DrillWorld(), say), as_json)


def _stop_children_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the drill's broker, stream and service are stopped too."""
    import signal

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _emit(report: DrillReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), default=str))  # noqa: T201
    else:
        print_report(report)
    if not report.passed:
        raise typer.Exit(1)


def _run_cli(drill: Callable[[Settings, Callable[[str], None]], DrillReport], as_json: bool) -> None:
    from rich.console import Console

    _stop_children_on_sigterm()
    _emit(drill(get_settings(), Console(stderr=True, highlight=False).print), as_json)


def cli_bad_challenger(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """A challenger trained on shuffled labels gets a canary share; the guard must stop it.

    Example: fraudctl drill bad-challenger --json
    """
    _run_cli(lambda settings, say: run_bad_challenger(settings, SHORT_WORLD, say), as_json)


def cli_bad_champion(
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """A bad version is promoted by hand; the monitor must roll back and every process serve the old one.

    Example: fraudctl drill bad-champion --json
    """
    _run_cli(lambda settings, say: run_bad_champion(settings, SHORT_WORLD, say), as_json)


app = typer.Typer(help="Scripted drills of the closed loop (embedded profile).", no_args_is_help=True)
app.command("drift")(cli_drift)
app.command("bad-challenger")(cli_bad_challenger)
app.command("bad-champion")(cli_bad_champion)
