"""`fraudctl up`, `status`, `down` in the embedded profile, as a user runs them: real processes.

`up` runs the compose init job's own script, then starts the broker, the stream processor,
the scoring service, the monitor and the gateway detached; `status` must see them healthy
and traffic scored; `down` must leave no process behind. Ports are free ones, so a running
`fraudctl up` of the developer's is not disturbed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.serve import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
FRAUDCTL = str(Path(sys.executable).parent / "fraudctl")


def test_up_status_down_run_the_whole_system_and_stop_it(tmp_path: Path) -> None:
    env = os.environ | {
        "FRAUD_PROFILE": "embedded",
        "FRAUD_VAR_DIR": str(tmp_path / "var"),
        "FRAUD_DEMO_DAYS": "28",  # a small world: the init job trains on it
        "FRAUD_DEMO_CARDS": "400",
        "FRAUD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "FRAUD_SERVE_PORT": str(free_port()),
        "FRAUD_MONITOR_PORT": str(free_port()),
        "FRAUD_STREAM_METRICS_PORT": str(free_port()),
        "FRAUD_PROMETHEUS_PORT": str(free_port()),
    }

    def fraudctl(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FRAUDCTL, *args], env=env, capture_output=True, text=True, timeout=timeout)

    pids: list[int] = []
    try:
        up = fraudctl("up")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert f"http://127.0.0.1:{env['FRAUD_SERVE_PORT']}" in up.stdout
        deadline = time.monotonic() + 120
        while True:  # the gateway sends 20 a second once it has read the dataset
            status = json.loads(fraudctl("status", "--json").stdout)
            if status["scored"] >= 50 or time.monotonic() > deadline:
                break
            time.sleep(2)
        # Prometheus too: .ci/run installs Debian's package, and `up` starts it when installed.
        assert {s["service"]: s["state"] for s in status["services"]} == dict.fromkeys(
            ("broker", "stream", "scoring", "monitor", "gateway", "prometheus"), "healthy"
        )
        assert status["champion"] == "1" and status["scored"] >= 50 and status["p99_ms"] is not None
        table = fraudctl("status")  # the table a person reads
        assert table.returncode == 0 and "champion 1, scored" in table.stdout, table.stdout + table.stderr
        pids = [s["pid"] for s in status["services"]]
        again = fraudctl("up")  # a second `up` starts nothing new
        assert again.returncode == 0, again.stderr[-2000:]
        assert [s["pid"] for s in json.loads(fraudctl("status", "--json").stdout)["services"]] == pids
    finally:
        down = fraudctl("down", timeout=180)
    assert down.returncode == 0, down.stderr
    status = json.loads(fraudctl("status", "--json").stdout)
    assert {s["state"] for s in status["services"]} == {"stopped"}
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
