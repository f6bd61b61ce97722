"""The shared controls' file store and the process's copy of them (tests/integration has the
two-process and Redis tests)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from core.settings import Settings
from services.scoring.controls import FileControlStore, SharedControls
from services.scoring.scorer import Controls


def test_writers_of_different_fields_keep_each_others(tmp_path: Path) -> None:
    path = tmp_path / "controls.json"
    one, other = FileControlStore(path), FileControlStore(path)
    assert one.read() == {}
    one.write({"kill_switch": True})
    other.write({"canary_percent": 10.0})
    values = one.read()
    assert (values["kill_switch"], values["canary_percent"]) == (True, 10.0)


def test_the_settings_apply_until_an_operator_sets_a_control_and_then_the_shared_value_wins(
    tmp_path: Path,
) -> None:
    settings = Settings(var_dir=tmp_path, canary_percent=10.0)
    here = SharedControls(settings, Controls(settings.canary_percent, settings.kill_switch))
    here.refresh()
    assert (here.controls.canary_percent, here.controls.kill_switch) == (10.0, False)
    # Another replica's admin call.
    elsewhere = SharedControls(settings, Controls(10.0, False))
    asyncio.run(elsewhere.set(canary_percent=0.0, kill_switch=True))
    assert (elsewhere.controls.canary_percent, elsewhere.controls.kill_switch) == (0.0, True)
    here.refresh()
    assert (here.controls.canary_percent, here.controls.kill_switch) == (0.0, True)
    # A restart with --canary 10 does not undo the operator's stop.
    restarted = SharedControls(settings, Controls(10.0, False))
    restarted.refresh()
    assert restarted.controls.canary_percent == 0.0


def test_an_unreadable_store_keeps_the_last_values_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(var_dir=tmp_path)
    shared = SharedControls(settings, Controls(0.0, False))
    asyncio.run(shared.set(kill_switch=True))
    (tmp_path / "scoring_controls.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="services.scoring.controls"):
        shared.refresh()
        shared.refresh()
    assert shared.controls.kill_switch is True
    assert len([r for r in caplog.records if "unreadable" in r.message]) == 1
