"""Load-test traffic is scored the way live traffic was, and a slow read is not a fallback.

The online store is backfilled with the data's last day held back (`backfill
--hold-back-days 1`); `fraudctl loadtest` sends that day with its own event times. Then
the service must find each card's history exactly where the data says it exists: the
share of requests with fresh card, merchant and device features is computed here from
the transactions alone and must equal what the service reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.dataset import read_transactions
from core.features import CARD_TTL, DEVICE_TTL
from core.settings import Settings
from pipelines.backfill import backfill_record
from services.loadtest import TransactionPool, run_load, training_decision_mix, transaction_pool
from tests.integration.scoring_support import (
    running_service,
    scraped_metrics,
    service_settings,
    trained_registry,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(profile="embedded", var_dir=tmp_path_factory.mktemp("traffic") / "var")
    trained_registry(settings, hold_back_days=1)
    return settings


@pytest.fixture(scope="module")
def cut(base: Settings) -> pd.Timestamp:
    record = backfill_record(base)
    assert record is not None and record["online_as_of"] is not None
    return pd.Timestamp(record["online_as_of"])


@pytest.fixture(scope="module")
def pool(base: Settings, cut: pd.Timestamp) -> TransactionPool:
    return transaction_pool(data_dir=base.var_dir / "data", after=cut.to_pydatetime(), seed=4)


@pytest.fixture(scope="module")
def url(base: Settings) -> Iterator[str]:
    with running_service(service_settings(base, prediction_log=False)) as client:
        yield str(client.base_url)


def _expected_history(data: Path, cut: pd.Timestamp, pool: TransactionPool) -> dict[str, float]:
    """Per entity, the share of the pool whose latest transaction up to the cut is within its TTL."""
    transactions = read_transactions(data)
    known = transactions[transactions["event_time"] <= cut]
    sent = transactions.set_index("transaction_id").loc[list(pool.source_ids)]
    sent_cards = [json.loads(b"{" + tail)["card_id"] for tail in pool.tails]  # some sent as new cards
    as_of = sent["event_time"] - pd.Timedelta(microseconds=1)

    def fresh(last_seen: pd.Series, ttl_us: int) -> np.ndarray:
        return (last_seen.notna() & (last_seen >= as_of - pd.Timedelta(microseconds=ttl_us))).to_numpy()

    card_last = known.groupby("card_id")["event_time"].max()
    device_last = known.groupby("device_id")["event_time"].max()
    cards = pd.Series(sent_cards, index=sent.index).map(card_last)
    devices = sent["device_id"].map(device_last)
    merchants = sent["merchant_id"].isin(set(known["merchant_id"]))  # a merchant is never forgotten
    return {
        "card": round(float(fresh(cards, CARD_TTL).mean()), 4),
        "merchant": round(float(merchants.mean()), 4),
        "device": round(float(fresh(devices, DEVICE_TTL).mean()), 4),
    }


def test_the_held_back_day_is_scored_with_the_history_the_store_held(
    base: Settings, cut: pd.Timestamp, pool: TransactionPool, url: str
) -> None:
    # One pass over the pool, in order: every transaction of the held-back day once.
    rps = 200.0
    result = run_load(url, rps, len(pool.tails) / rps, 0, 1_000, transactions=pool)
    assert result.errors == 0 and result.requests == len(pool.tails)
    assert result.history_share == _expected_history(base.var_dir / "data", cut, pool)
    assert result.card_history_share is not None and result.card_history_share >= 0.9
    assert 0 < pool.new_cards < 0.05 * len(pool.tails)  # the no-history path runs too
    assert result.served_by_mix == {"champion": 1.0}
    assert sum(result.decision_mix.values()) == pytest.approx(1) and result.decision_mix["review"] > 0
    # The champion on the same transactions' training vectors: the store froze at the cut,
    # so a card's later transactions of the day lack its earlier ones; close, not equal.
    in_training = training_decision_mix(base, pool)
    assert in_training is not None and in_training["transactions"] == len(pool.tails)
    assert abs(in_training["decision_mix"]["approve"] - result.decision_mix["approve"]) < 0.03


def test_the_cli_finds_the_held_back_day_and_reports_the_traffic(base: Settings, url: str) -> None:
    env = os.environ | {
        "FRAUD_VAR_DIR": str(base.var_dir),
        "FRAUD_MLFLOW_TRACKING_URI": base.mlflow_tracking_uri,
    }
    args = ["loadtest", "--url", url, "--rps", "200", "--duration", "2", "--warmup", "0.5"]
    fraudctl = Path(sys.executable).parent / "fraudctl"
    done = subprocess.run(
        [str(fraudctl), *args, "--slo-p99-ms", "1000", "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["card_history_share"] >= 0.9 and report["pool"]["after"] is not None
    assert set(report["decision_mix"]) == {"approve", "review", "decline"}
    assert report["training_decision_mix"]["decision_mix"].keys() == report["decision_mix"].keys()
    table = subprocess.run(
        [str(fraudctl), *args, "--slo-p99-ms", "1000"], env=env, capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    for row in ("stored history", "decisions", "in training", "served by", "new cards"):
        assert row in table.stdout, table.stdout


def test_a_read_past_the_budget_is_used_and_counted_slow_not_a_fallback(
    base: Settings, pool: TransactionPool
) -> None:
    # A budget of 1 µs: the real SQLite read (~0.2 ms) really takes longer; nothing is faked.
    settings = service_settings(
        base, prediction_log=False, feature_timeout_ms=0.001, breaker_failures=3, breaker_reset_seconds=60
    )
    bodies = [json.loads(pool.body(i)) for i in range(len(pool.tails))]
    with_history = [b for b in bodies if not b["card_id"].startswith("new-card-")]
    with running_service(settings) as client:
        for body in with_history[:2]:
            out = client.post("/v1/score", json=body).json()
            assert out["served_by"] == "champion" and "card" in out["stored_features"], out
            assert not any(reason.startswith("feature store") for reason in out["reasons"]), out
        counters = scraped_metrics(client)
        assert counters["fraud_feature_lookups_total{outcome=slow}"] == 2
        fallbacks = {key: n for key, n in counters.items() if key.startswith("fraud_fallbacks_total")}
        assert fallbacks and not any(fallbacks.values()), fallbacks  # every reason's series, at 0
        # ... but a store that keeps answering late is a failing store: the breaker opens.
        client.post("/v1/score", json=with_history[2])
        out = client.post("/v1/score", json=with_history[3]).json()
        assert out["served_by"] == "fallback" and out["stored_features"] == []
        assert "feature store breaker open: scored with request-time features" in out["reasons"]
        assert client.get("/v1/model").json()["feature_breaker"] == "open"
