"""Importing the feature repository leaves the process's environment as it found it."""

from __future__ import annotations

import os
import subprocess
import sys


def test_feast_does_not_switch_child_processes_to_prometheus_multiprocess_mode() -> None:
    # In a fresh interpreter: this test process may have imported Feast already.
    code = (
        "import os, feature_repo.store, feast.metrics, feast.utils;"
        "print(os.environ.get('PROMETHEUS_MULTIPROC_DIR'), os.environ.get('PROMETHEUS_MULTIPROCESS_DIR'))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"], out.stdout
