"""The monitor's skew check (monitoring/skew.py) on real served vectors: healthy, stale, broken.

The world is `test_scoring_skew.py`'s: the session's `training_side` (one dataset, its Feast
store holding everything, the models trained and registered) and a serving store that holds
only what happened before a cut T (day L-2, 09:00). The real service scores, on T's day after
T, from that store and logs to `predictions` on an embedded broker:

* healthy: transactions that are the first after T for their card and their device. For them
  the serving store holds exactly the state strictly before t, so the served vector is
  training's (`test_scoring_skew.py` proves it feature by feature);
* stale: the second or third after T for their card (and at most the third for their device):
  the store never saw the card's transactions after T, so it serves the card's state one or two
  events behind, what a lagging stream processor does;
* broken: more first-after-T transactions, scored after the merchant rows of T's day were
  rewritten in the online store with `merchant_txn_count_24h` counted over 7 days (a serving
  job computing one feature differently). A real write through Feast, not an edited log.

The check reads the frame the monitor holds (built from the `predictions` records) and the
training store's offline side, and must report ~0 on the healthy rows, name the card features
and call them stale on the stale rows, and name exactly `merchant_txn_count_24h`, unexplained,
on the broken ones. It must also agree row by row with the skew tests' own comparison
(`vector_mismatches`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.stream_fed_scoring import FEATURE_SOURCE as HARNESS_FEATURE_SOURCE
from benchmarks.stream_fed_scoring import read_predictions, vector_mismatches
from core.dataset import read_labels, read_transactions, write_dataset
from core.feature_engine import MERCHANT_VIEW, SNAPSHOT_TIME_COLUMN
from core.features import MODEL_FEATURES
from core.settings import Settings
from feature_repo.data_sources import offline_dir_of
from feature_repo.store import open_store
from monitoring.metrics import MonitorMetrics
from monitoring.skew import FEATURE_SOURCE, UNCHECKED_WITHOUT_REQUEST, SkewReport, check_skew, publish_skew
from pipelines.backfill import backfill
from pipelines.broker import EmbeddedBroker
from tests.integration.scoring_support import as_body, running_service, service_settings
from tests.integration.skew_support import TrainingSide

pytestmark = pytest.mark.slow

CUT_DAYS_BEFORE_LAST, CUT_HOUR = 2, 9  # as test_scoring_skew.py, for the same reasons
PER_GROUP = 40
BROKEN_FEATURE = "merchant_txn_count_24h"


@dataclass(repr=False)  # a failure shows the assertion, not frames
class World:
    training: TrainingSide
    groups: dict[str, list[str]]  # healthy | stale | broken -> transaction ids scored
    records: dict[str, dict[str, Any]]  # transaction_id -> `predictions` record
    frame: pd.DataFrame  # the monitor's predictions frame, built from the records
    transactions: pd.DataFrame  # the raw requests
    reports: dict[tuple[str, bool], SkewReport] = field(default_factory=dict)  # each check runs once

    def rows(self, group: str) -> pd.DataFrame:
        """A group's rows of the frame; "all": every row."""
        if group == "all":
            return self.frame
        return self.frame[self.frame["transaction_id"].isin(self.groups[group])]


def _spread(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most n rows spread over the frame, deterministically."""
    if len(frame) <= n:
        return frame
    return frame.iloc[np.linspace(0, len(frame) - 1, n).round().astype(int)]


def _choose(transactions: pd.DataFrame, cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    times = transactions["event_time"]
    after = transactions[(times >= cut) & (times < cut.floor("D") + pd.Timedelta(days=1))]
    card_rank = after.groupby("card_id").cumcount()
    has_device = after["device_id"].notna()
    device_rank = pd.Series(0, index=after.index)
    device_rank[has_device] = after[has_device].groupby("device_id").cumcount()
    first = after[(card_rank == 0) & (device_rank == 0)]
    stale = after[card_rank.between(1, 2) & (device_rank <= 2)]
    return {
        "healthy": _spread(first.iloc[::2], PER_GROUP),
        "stale": _spread(stale, PER_GROUP),
        "broken": _spread(first.iloc[1::2], PER_GROUP),
    }


def _break_merchant_rows(settings: Settings, day: pd.Timestamp) -> int:
    """Rewrite the day's merchant rows online with the 24 h count taken over 7 days."""
    rows = pd.read_parquet(offline_dir_of(settings.offline_dir, MERCHANT_VIEW))
    today = rows[rows[SNAPSHOT_TIME_COLUMN] == day]
    wrong = today.assign(**{BROKEN_FEATURE: today["merchant_txn_count_7d"]})
    open_store(settings).write_to_online_store(MERCHANT_VIEW, wrong)
    return int((wrong[BROKEN_FEATURE] != today[BROKEN_FEATURE]).sum())


def _frame(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The monitor's frame (the lead's contract): one row per record, one column per feature."""
    rows = []
    for r in records.values():
        row = {k: r.get(k) for k in ("transaction_id", "card_id", "merchant_id", "device_id", "served_by")}
        row |= {"event_time": r["event_time"], "scored_at": r["scored_at"], "score": r["score"]}
        row |= r["features"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in ("event_time", "scored_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601").astype(
            "datetime64[us, UTC]"
        )
    frame["amount"] = np.expm1(frame["amount_log"])
    return frame


@pytest.fixture(scope="module")
def world(training_side: TrainingSide, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    started = time.monotonic()
    transactions, labels = read_transactions(training_side.data_dir), read_labels(training_side.data_dir)
    cut = transactions["event_time"].max().floor("D") - pd.Timedelta(days=CUT_DAYS_BEFORE_LAST)
    cut += pd.Timedelta(hours=CUT_HOUR)
    chosen = _choose(transactions, cut)
    serve_var = tmp_path_factory.mktemp("monitor-skew") / "var"
    before = serve_var / "data-before-cut"
    write_dataset(
        before,
        transactions[transactions["event_time"] < cut],
        labels[labels["reported_at"] < cut],
        {"command": "test_monitor_skew", "cut": cut.isoformat()},
    )
    base = Settings(
        profile="embedded",
        var_dir=serve_var,
        feast_project=f"monitor_skew_{uuid.uuid4().hex[:8]}",
        mlflow_tracking_uri=training_side.settings.mlflow_tracking_uri,
    )
    backfill(before, base)
    backfilled = time.monotonic()

    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker:
        # A generous feature budget: which values are read matters here, not how fast.
        settings = service_settings(broker.settings, prediction_log=True, feature_timeout_ms=2_000)
        with running_service(settings) as client:

            def score(group: str) -> None:
                for row in chosen[group].drop(columns=["scenario"]).to_dict("records"):
                    response = client.post("/v1/score", json=as_body(row))
                    assert response.status_code == 200, response.text

            score("healthy")
            score("stale")
            assert _break_merchant_rows(settings, cut.floor("D")) > 0
            score("broken")
        groups = {name: chosen[name]["transaction_id"].tolist() for name in chosen}
        records = read_predictions(settings, {t for ids in groups.values() for t in ids})
    print(
        f"\nmonitor skew world: backfill {backfilled - started:.1f} s, "
        f"broker + service + scoring {time.monotonic() - backfilled:.1f} s"
    )
    yield World(training_side, groups, records, _frame(records), transactions)


def test_the_groups_are_what_the_test_needs(world: World) -> None:
    for name, ids in world.groups.items():
        assert len(ids) >= 25, (name, len(ids))
        rows = world.rows(name)
        assert len(rows) == len(ids) and (rows["served_by"] == "champion").all(), name
    stale = world.rows("stale")
    assert (stale["card_has_history"] == 1).all()  # a card with state, only an old one


def _check(world: World, group: str, raw: bool = True) -> SkewReport:
    if (group, raw) in world.reports:
        return world.reports[group, raw]
    report = check_skew(
        world.training.settings, world.rows(group), transactions=world.transactions if raw else None
    )
    world.reports[group, raw] = report
    json.dumps(report.to_dict(), allow_nan=False)  # what the monitor's page and --json print
    print(f"\n{group} ({'raw requests' if raw else 'log only'}): {json.dumps(_summary(report))}")
    return report


def _summary(report: SkewReport) -> dict[str, Any]:
    d = report.to_dict()
    return {
        k: d[k]
        for k in (
            "rows_checked",
            "rows_mismatched",
            "rows_stale",
            "stale_events_behind",
            "mismatched_features",
            "unexplained_features",
            "seconds",
        )
    }


@pytest.mark.parametrize("raw", [True, False], ids=["raw-requests", "log-only"])
def test_healthy_serving_shows_no_skew(world: World, raw: bool) -> None:
    report = _check(world, "healthy", raw)
    assert report.rows_checked == len(world.groups["healthy"])
    assert report.rows_mismatched == 0, report.to_dict()
    assert report.mismatched_features == []
    assert set(report.unchecked) == (set() if raw else set(UNCHECKED_WITHOUT_REQUEST))


@pytest.mark.parametrize("raw", [True, False], ids=["raw-requests", "log-only"])
def test_a_stale_online_store_is_named_and_called_stale(world: World, raw: bool) -> None:
    report = _check(world, "stale", raw)
    assert report.rows_mismatched == report.rows_checked  # every card is behind
    # The card's age is measured from the newest event the store has: wrong in every row.
    assert report.features["card_seconds_since_prev_txn"].mismatch_share == 1.0
    assert {FEATURE_SOURCE[f] for f in report.mismatched_features} <= {"card", "device"}
    # ... and every difference is the state of an earlier event, one or two behind.
    assert report.unexplained_features == [] and report.rows_stale == report.rows_mismatched
    assert set(report.stale_events_behind) <= {1, 2} and 1 in report.stale_events_behind
    card = report.features["card_seconds_since_prev_txn"]
    assert card.example_served is not None and card.example_offline is not None
    assert card.example_served > card.example_offline  # served: a longer gap, an older anchor


@pytest.mark.parametrize("raw", [True, False], ids=["raw-requests", "log-only"])
def test_a_feature_computed_differently_is_named_and_unexplained(world: World, raw: bool) -> None:
    report = _check(world, "broken", raw)
    assert report.mismatched_features == [BROKEN_FEATURE]
    assert report.unexplained_features == [BROKEN_FEATURE]
    broken = report.features[BROKEN_FEATURE]
    assert broken.mismatch_share > 0.9 and broken.stale == 0
    tid = broken.example_transaction_id
    assert tid is not None and broken.example_served == world.records[tid]["features"][BROKEN_FEATURE]
    assert broken.example_served is not None and broken.example_offline is not None
    assert broken.max_abs_difference == pytest.approx(abs(broken.example_served - broken.example_offline))


def test_only_model_scored_rows_are_sampled(world: World) -> None:
    frame = world.rows("healthy").copy()
    frame.loc[frame.index[:10], "served_by"] = "fallback"  # scored defaults on purpose
    frame.loc[frame.index[10:15], "served_by"] = "kill_switch"  # no model
    report = check_skew(world.training.settings, frame, sample=12, seed=7)
    assert report.rows_eligible == len(frame) - 15 and report.rows_checked == 12
    assert report.rows_mismatched == 0


def test_the_check_agrees_with_the_skew_tests_comparison(world: World) -> None:
    """Same rows, same notion of equality: `vector_mismatches` (exact, in float32)."""
    assert FEATURE_SOURCE == HARNESS_FEATURE_SOURCE
    everything = world.frame
    report = _check(world, "all")
    assert report.rows_checked == len(everything)  # under the sample size: every row
    expected = vector_mismatches(world.records, world.training.frame, everything["transaction_id"].tolist())
    counts = {f: report.features[f].mismatches for f in MODEL_FEATURES}
    assert counts == expected.sum().astype(int).to_dict()
    assert report.rows_mismatched == int(expected.any(axis=1).sum())


def test_the_check_reaches_the_monitors_metrics(world: World) -> None:
    report = _check(world, "broken", raw=False)
    metrics = MonitorMetrics()
    publish_skew(metrics, report)
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name.startswith("fraud_skew_") and not s.name.endswith("_created"):
                samples[(s.name, s.labels.get("feature", ""))] = s.value
    share = samples[("fraud_skew_mismatch_share", BROKEN_FEATURE)]
    assert share == report.features[BROKEN_FEATURE].mismatch_share > 0.1  # FeatureSkewHigh's threshold
    assert samples[("fraud_skew_mismatch_share", "card_txn_count_1h")] == 0.0
    assert np.isnan(samples[("fraud_skew_mismatch_share", "merchant_is_foreign")])  # not compared
    assert samples[("fraud_skew_max_abs_difference", BROKEN_FEATURE)] > 0
    assert samples[("fraud_skew_rows_checked_total", "")] == report.rows_checked
    labels = {feature for (name, feature) in samples if name != "fraud_skew_rows_checked_total"}
    assert labels == set(MODEL_FEATURES)
