"""`fraudctl monitor` against a real Tansu broker: restart-safe, no loss, no double counting.

The log is synthetic prediction records in the scoring service's schema (benchmarks/
bench_monitor.py), with resends of some records as the prediction writer makes after a
crash. One monitor reads it uninterrupted; another is `fraudctl monitor` in its own
process, SIGKILLed mid-way after a checkpoint, then restarted: both must end with the same
state, window for window.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.bench_monitor import publish, synthetic_log
from core.settings import Settings
from monitoring.monitor import Monitor
from monitoring.state import CHECKPOINT_FILE, MonitorState
from pipelines.broker import EmbeddedBroker

pytestmark = pytest.mark.slow

PREDICTIONS = 12_000
RESENT = 300  # the first records, published twice


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    settings = Settings(var_dir=tmp_path_factory.mktemp("monitor") / "var")
    with EmbeddedBroker(settings, bootstrap="127.0.0.1:0") as running:
        predictions, labels = synthetic_log(PREDICTIONS, seed=3, days=4)
        publish(running.settings, predictions + predictions[:RESENT], labels)
        yield running


def _settings(broker: EmbeddedBroker, var_dir: Path) -> Settings:
    return broker.settings.model_copy(update={"var_dir": var_dir, "drift_window_hours": 6.0})


def _state(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    state = MonitorState.load(settings.monitor_dir)
    predictions = state.predictions.sort_values("transaction_id").reset_index(drop=True)
    labels = state.labels.sort_values(["transaction_id", "reported_at"]).reset_index(drop=True)
    return predictions, labels, state.evaluator["evaluator"]


def test_a_killed_and_restarted_monitor_ends_as_an_uninterrupted_one(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    straight = _settings(broker, tmp_path / "straight")
    summary = Monitor(straight, group_id="straight").run(idle_exit_s=3)
    assert summary.consumed["predictions"] == PREDICTIONS + RESENT
    assert summary.duplicates["predictions"] == RESENT  # resends are not counted twice

    killed = _settings(broker, tmp_path / "killed")
    env = os.environ | {
        "FRAUD_VAR_DIR": str(killed.var_dir),
        "FRAUD_KAFKA_BOOTSTRAP": killed.kafka_bootstrap,
        "FRAUD_DRIFT_WINDOW_HOURS": "6",
    }
    fraudctl = Path(sys.executable).parent / "fraudctl"
    command = [str(fraudctl), "monitor", "--group", "killed", "--port", "-1", "--checkpoint-interval", "0.2"]
    command += ["--max-records", "200"]  # small polls: the kill lands mid-way
    log_path = tmp_path / "killed-monitor.log"
    log = log_path.open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    checkpoint = killed.monitor_dir / CHECKPOINT_FILE
    deadline = time.monotonic() + 90
    consumed = 0
    while consumed < PREDICTIONS // 4:
        if process.poll() is not None:
            log.close()
            pytest.fail(
                f"the monitor exited ({process.returncode}) before it was killed:\n"
                + log_path.read_text()[-3000:]
            )
        assert time.monotonic() < deadline, "the monitor made no checkpoint in time"
        time.sleep(0.05)
        if checkpoint.exists():
            consumed = sum(json.loads(checkpoint.read_text())["offsets"].values())
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    log.close()
    assert consumed < PREDICTIONS + RESENT, "the kill came after the end: nothing was interrupted"

    resumed = Monitor(killed, group_id="killed")
    assert resumed.summary.resumed_from_checkpoint
    resumed.run(idle_exit_s=3)

    a_predictions, a_labels, a_evaluator = _state(straight)
    b_predictions, b_labels, b_evaluator = _state(killed)
    assert len(a_predictions) == PREDICTIONS
    pd.testing.assert_frame_equal(a_predictions, b_predictions)
    pd.testing.assert_frame_equal(a_labels, b_labels)
    assert a_evaluator["windows_evaluated"] == b_evaluator["windows_evaluated"] > 10
    assert a_evaluator["last_window_end"] == b_evaluator["last_window_end"]
