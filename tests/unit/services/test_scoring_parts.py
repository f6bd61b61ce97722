"""The scoring service's small parts on their own: canary buckets, breaker, spool, reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.features import MODEL_FEATURES
from services.scoring import reasons
from services.scoring.features import CircuitBreaker
from services.scoring.prediction_writer import Spool
from services.scoring.scorer import in_canary


def test_canary_share_matches_the_percent_and_sticks_to_the_card() -> None:
    cards = [f"c_{i:06d}" for i in range(20_000)]
    for percent in (0, 1, 10, 50, 100):
        share = sum(in_canary(card, percent) for card in cards) / len(cards)
        assert abs(share - percent / 100) < 0.01, (percent, share)
    assert [in_canary(c, 10) for c in cards[:500]] == [in_canary(c, 10) for c in cards[:500]]
    # Raising the share only adds cards: nobody in the 10% canary leaves it at 20%.
    assert all(in_canary(c, 20) for c in cards if in_canary(c, 10))


def test_breaker_opens_after_failures_and_one_probe_closes_it() -> None:
    states: list[str] = []
    breaker = CircuitBreaker(failures_to_open=3, reset_seconds=0.05, on_change=states.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.record(ok=False)
    assert breaker.state == "closed"
    breaker.record(ok=False)
    assert breaker.state == "open" and not breaker.allow()
    import time

    time.sleep(0.06)
    assert breaker.allow() and breaker.state == "half_open"
    assert not breaker.allow(), "only one probe while half-open"
    breaker.record(ok=False)
    assert breaker.state == "open"
    time.sleep(0.06)
    assert breaker.allow()
    breaker.record(ok=True)
    assert breaker.state == "closed" and states == ["open", "half_open", "open", "half_open", "closed"]


def test_spool_keeps_order_across_segments_and_respects_its_cap(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("services.scoring.prediction_writer.SEGMENT_BYTES", 64)
    spool = Spool(tmp_path, max_bytes=10_000)
    lines = [f'{{"transaction_id":"t{i:03d}"}}'.encode() for i in range(20)]
    for i in range(0, 20, 4):
        assert spool.append(lines[i : i + 4]) == 0
    assert spool.records == 20 and len(spool.segments()) > 1
    reopened = Spool(tmp_path, max_bytes=10_000)  # a restarted service finds its backlog
    assert reopened.records == 20 and reopened.bytes == spool.bytes
    replayed = []
    while (oldest := reopened.oldest()) is not None:
        segment, batch = oldest
        replayed += batch
        reopened.remove(segment, len(batch))
    assert replayed == lines and reopened.records == 0 and reopened.bytes == 0
    small = Spool(tmp_path / "small", max_bytes=100)
    assert small.append(lines) == 20 - small.records and small.bytes <= 100


def test_reasons_name_the_features_that_raise_the_score() -> None:
    typical = np.zeros(len(MODEL_FEATURES), dtype=np.float32)
    vector = typical.copy()
    count_1h = MODEL_FEATURES.index("card_txn_count_1h")
    vector[count_1h] = 9
    vector[MODEL_FEATURES.index("hour_of_day")] = 3
    rows, differing = reasons.occlusion_rows(vector, typical)
    assert len(rows) == 3 and list(differing) == sorted(differing)
    # A toy model: only the hourly count matters.
    scores = 0.1 + 0.05 * rows[:, count_1h]
    explained = reasons.explain(vector, typical, scores, differing)
    assert explained == ["card's purchases in 1 h: 9 (typical 0; score +0.45)"]


def test_the_decision_encodes_to_exactly_the_documented_response() -> None:
    from dataclasses import fields

    from services.scoring.schemas import ScoreOut
    from services.scoring.scorer import Decision

    assert [f.name for f in fields(Decision)] == list(ScoreOut.model_fields)
    decision = Decision("t1", 0.25, "review", ["x"], "3", "champion", ["card", "merchant"], 1.5)
    from dataclasses import asdict

    assert ScoreOut.model_validate(asdict(decision)).model_dump() == asdict(decision)
