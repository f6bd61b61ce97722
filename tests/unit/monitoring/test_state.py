"""The monitor's state on disk: compaction with labels only (they may arrive before any
prediction), and a reload that gives back what was kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from core.events import Label
from monitoring.state import COMPACT_PARTS, MonitorState

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_compaction_before_any_prediction_keeps_the_labels(tmp_path: Path) -> None:
    # Seen in CI: the first polls brought only labels, and the 20th save (a compaction)
    # took the retention horizon from the latest prediction, of which there was none.
    state = MonitorState(tmp_path / "monitor")
    for i in range(COMPACT_PARTS + 2):
        label = Label(
            transaction_id=f"t{i}", card_id="c1", is_fraud=True, reported_at=T0 + timedelta(hours=i)
        )
        assert state.add_label(label)
        state.save()
    assert state.predictions.empty and len(state.labels) == COMPACT_PARTS + 2
    reloaded = MonitorState.load(tmp_path / "monitor")
    assert sorted(reloaded.labels["transaction_id"]) == sorted(f"t{i}" for i in range(COMPACT_PARTS + 2))
    assert not reloaded.add_label(label)  # still known after the reload: a resend is a duplicate
