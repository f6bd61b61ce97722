"""The README's commands, run through the real `fraudctl` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

FRAUDCTL = [sys.executable, "-c", "from core.cli import main; main()"]


def fraudctl(*args: str, var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FRAUD_VAR_DIR": str(var_dir)}
    return subprocess.run([*FRAUDCTL, *args], env=env, capture_output=True, text=True, timeout=300)


def test_help_lists_every_verb(tmp_path: Path) -> None:
    result = fraudctl("--help", var_dir=tmp_path)
    assert result.returncode == 0
    for verb in (
        "simulate",
        "import",
        "backfill",
        "features",
        "broker",
        "train",
        "models",
        "promote",
        "rollback",
        "demo",
        "monitor",
        "drill",
        "clean",
        "bench",
    ):
        assert verb in result.stdout


def test_simulate_backfill_features_clean(tmp_path: Path) -> None:
    var = tmp_path / "var"
    data = var / "data"
    sim = fraudctl(
        "simulate",
        "--days",
        "3",
        "--cards",
        "60",
        "--merchants",
        "20",
        "--seed",
        "3",
        "--out",
        str(data),
        var_dir=var,
    )
    assert sim.returncode == 0, sim.stderr
    assert (data / "manifest.json").exists()

    back = fraudctl("backfill", "--data", str(data), var_dir=var)
    assert back.returncode == 0, back.stderr
    assert "backfilled" in back.stdout

    assert json.loads((data / "manifest.json").read_text())["transactions"] > 0
    first_card = pd.read_parquet(data / "transactions")["card_id"].iloc[0]
    shown = fraudctl("features", "--card", first_card, "--json", var_dir=var)
    assert shown.returncode == 0, shown.stderr
    snapshots = json.loads(shown.stdout)
    assert snapshots["card"]["card_txn_count_30d"] >= 1

    cleaned = fraudctl("clean", "--yes", var_dir=var)
    assert cleaned.returncode == 0 and not var.exists()


def test_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    # A long path: a message that wraps at the terminal width is not one line (CI's paths are long).
    missing = fraudctl("backfill", "--data", str(tmp_path / ("deep" * 20) / "nope"), var_dir=tmp_path / "var")
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("error:")
    assert len(missing.stderr.strip().splitlines()) == 1
    bad = fraudctl("simulate", "--days", "0", "--out", str(tmp_path / "d"), var_dir=tmp_path / "var")
    assert bad.returncode != 0 and "error" in bad.stderr.lower()


def test_registry_verbs_fail_with_one_line_on_an_empty_registry(tmp_path: Path) -> None:
    var = tmp_path / "var"
    listed = fraudctl("models", var_dir=var)
    assert listed.returncode == 0 and "no versions" in listed.stdout
    for args, reason in ((("promote", "7"), "unknown version 7"), (("rollback",), "nothing to roll back")):
        failed = fraudctl(*args, var_dir=var)
        assert failed.returncode == 1
        assert failed.stderr.strip().startswith("error:") and reason in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1
