"""The monitor's page: an empty snapshot is a page of "none yet", a full one shows every part
(drift sorted by PSI with sparklines, the performance plots with their band and the CBPE line,
skew, canary, audit), text from the snapshot is escaped, a broken part stays in its section,
and the JSON view of a snapshot is strict JSON. The snapshot's numbers come from the real
drift and performance functions on small seeded frames."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pandas as pd
import pytest

from models.costs import CostModel, Thresholds, decide
from monitoring.drift import DRIFT_COLUMNS, DriftAlarm, feature_drift
from monitoring.page import REFRESH_SECONDS, drift_rows, jsonable, records, render_page, sparkline
from monitoring.performance import PerformanceSettings, estimate, matured

T0 = pd.Timestamp("2026-01-01", tz="UTC")
SECTIONS = ("drift", "canary", "skew", "performance", "audit")
VOID = {"meta", "br", "img", "input", "link", "hr"}


class _Balance(HTMLParser):
    """Every element the page opens it closes, in order (what a browser would forgive, we don't)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()


def assert_well_formed(page: str) -> None:
    checker = _Balance()
    checker.feed(page)
    checker.close()
    assert not checker.errors and not checker.open, (checker.errors[:5], checker.open[-5:])


def section(page: str, anchor: str) -> str:
    start = page.index(f'<section id="{anchor}">')
    return page[start : page.index("</section>", start)]


# --- a snapshot from real computations -------------------------------------------------------
def _frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    data = {c: rng.normal(0.0, 1.0, n) for c in DRIFT_COLUMNS}
    data["amount_log"] = rng.normal(3.5 + shift, 1.0, n)
    return pd.DataFrame(data)


def drift_part() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    reference = _frame(rng, 1_000)
    alarm = DriftAlarm(windows_required=2)
    history: dict[str, list[float]] = {c: [] for c in DRIFT_COLUMNS}
    for hour in range(6):
        results = feature_drift(reference, _frame(rng, 500, shift=1.0 if hour >= 3 else 0.0))
        update = alarm.update((T0 + pd.Timedelta(hours=hour + 1)).to_pydatetime(), results)
        for r in results:
            history[r.column].append(r.psi)
    return {
        "window_end": update.window_end.isoformat(),
        "alarm": update.alarmed,
        "alarmed_features": sorted(update.active),
        "features": drift_rows(results, update.active, history),
    }


@pytest.fixture(scope="module")
def performance() -> tuple[dict[str, Any], pd.DataFrame]:
    """Six days of calibrated scores, matured with fast labels (maturity 2 days): the snapshot's
    part and `matured`'s table."""
    rng = np.random.default_rng(5)
    n = 6 * 1_500
    score = np.where(rng.random(n) < 0.05, rng.beta(2, 2, n), rng.beta(1, 100, n))
    event_time = T0 + pd.to_timedelta(rng.uniform(0, 6 * 86_400, n), unit="s")
    fraud = rng.random(n) < score
    frame = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": [f"c{c}" for c in rng.integers(0, 2_000, n)],
            "event_time": event_time,
            "score": score,
            "decision": decide(score, Thresholds(review=0.2, decline=0.6)),
            "served_by": "champion",
            "model_version": "3",
            "amount": np.expm1(rng.normal(3.5, 1.0, n)),
            "is_fraud": np.where(fraud, True, np.nan),
            "reported_at": event_time + pd.to_timedelta(rng.uniform(0.1, 1.0, n), unit="D"),
            "source": "chargeback",
        }
    )
    now = T0 + pd.Timedelta(days=6)
    settings = PerformanceSettings(maturity=pd.Timedelta(days=2), n_resamples=50)
    realised = matured(frame, now, CostModel(), settings)
    part = {
        "expected": records(estimate(frame, cost=CostModel())),
        "matured": records(realised),
        "label_share": float(realised["label_share"].iloc[-1]),
        "missed_fraud": {
            "alarm": True,
            "since": "2026-01-03T00:00:00+00:00",
            "streak": 3,
            "pooled_days": 3,
            "latest": {
                "last_day": "2026-01-04",
                "expected_fraud": 40.2,
                "found_fraud": 91.5,
                "label_share": 0.35,
                "z": 5.1,
            },
        },
    }
    return part, realised


@pytest.fixture(scope="module")
def full(performance: tuple[dict[str, Any], pd.DataFrame]) -> dict[str, Any]:
    skew_share = [0.0] * 20 + [0.05, 0.25]
    return {
        "generated_at": "2026-01-07T10:00:00+00:00",
        "event_time": "2026-01-07T00:00:00+00:00",
        "champion": {"version": "3", "model_type": "lightgbm"},
        "challenger": {"version": "4", "model_type": "logistic"},
        "canary_percent": 25.0,
        "counts": {"predictions": 9_000, "labels": 512, "labelled_predictions": 510, "windows_evaluated": 6},
        "drift": drift_part(),
        "reports": [
            {"name": "drift-20260101T0500.html", "at": "2026-01-01T05:00:00+00:00", "features": ["a"]}
        ],
        "performance": performance[0],
        "skew": {
            "checked": 200,
            "at": "2026-01-07T00:00:00+00:00",
            "features": [
                {"feature": f"f{i:02d}", "mismatch_share": share, "max_abs_difference": 3 * share}
                for i, share in enumerate(skew_share)
            ],
        },
        "canary": {
            "state": "canary",
            "percent": 25.0,
            "verdict": "marginal",
            "checks": [
                {"name": "p99 latency", "value": 4.2, "threshold": 5.0, "outcome": "pass", "critical": True},
                {
                    "name": "review rate shift",
                    "value": 0.01,
                    "threshold": 0.005,
                    "outcome": "fail",
                    "critical": False,
                },
            ],
        },
        "audit": [
            {
                "at": "2026-01-06T12:00:00+00:00",
                "actor": "monitor",
                "action": "canary_step",
                "versions": {"challenger": "4"},
                "reason": "checks passed for 1 h",
                "numbers": {"to_percent": 25},
            },
            {
                "at": "2026-01-06T09:00:00+00:00",
                "actor": "alice",
                "action": "promote",
                "versions": {"champion": "3"},
                "reason": "by hand",
                "numbers": {},
            },
        ],  # fmt: skip
    }


# --- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("snapshot", [None, {}, {"drift": {}, "performance": {}, "skew": {}, "canary": {}}])
def test_an_empty_snapshot_is_a_page_of_none_yet(snapshot: dict[str, Any] | None) -> None:
    page = render_page(snapshot)
    assert page.startswith("<!doctype html>")
    assert f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' in page
    for anchor in SECTIONS:
        assert "none yet" in section(page, anchor), anchor
    assert "could not be drawn" not in page
    assert "blind to concept drift" in page  # the caveat is there before the first number
    assert_well_formed(page)


def test_a_full_snapshot_shows_every_part(full: dict[str, Any]) -> None:
    page = render_page(full)
    assert_well_formed(page)
    assert "could not be drawn" not in page and "none yet" not in page
    assert "v3" in page and "lightgbm" in page and "v4" in page and "25 %" in page

    drift = section(page, "drift")
    features = full["drift"]["features"]
    assert full["drift"]["alarm"] and full["drift"]["alarmed_features"] == ["amount_log"]
    order = re.findall(r'<td class="name">([^<]+)</td>', drift)
    assert order == [f["feature"] for f in sorted(features, key=lambda f: -f["psi"])]
    assert order[0] == "amount_log" and drift.count('class="alarmed"') == 1
    assert drift.count('<svg class="sparkline"') == len(DRIFT_COLUMNS)
    assert drift.count('class="threshold"') == len(DRIFT_COLUMNS)
    assert 'href="/reports/drift-20260101T0500.html"' in drift

    performance = section(page, "performance")
    assert performance.count('<svg class="plot"') == 2
    assert performance.count('class="band"') == 2  # precision and recall, each with its interval
    assert performance.count('class="expected"') >= 2 and performance.count('class="realised"') >= 2
    assert "Declined transactions never get a chargeback" in performance
    assert "Latest matured day" in performance and "labels still arriving" in performance
    assert "Missed fraud (" in performance and "ALARM</span> since 2026-01-03" in performance
    assert "expected <b>40.2</b> frauds" in performance and "<b>91.5</b>" in performance
    # The y axis ends on a round percentage above every plotted value.
    ticks = [int(t) for t in re.findall(r'text-anchor="end">(\d+)%</text>', performance)]
    assert ticks and all(t % 5 == 0 for t in ticks)

    skew = section(page, "skew")
    assert re.findall(r'<td class="name">([^<]+)</td>', skew)[:2] == ["f21", "f20"]
    assert "and 12 more feature(s), all matching" in skew

    canary = section(page, "canary")
    assert 'badge warn">marginal' in canary and 'badge bad">fail' in canary and "critical" in canary

    audit = section(page, "audit")
    assert audit.index("canary_step") < audit.index("promote")  # as given: latest first
    assert "alice" in audit and "to_percent=25" in audit


def test_performance_rows_become_json_records(performance: tuple[dict[str, Any], pd.DataFrame]) -> None:
    _, realised = performance
    rows = records(realised)
    assert len(rows) == len(realised) > 0
    first = rows[0]
    assert first["day"] == "2026-01-01T00:00:00+00:00"
    assert (first["served_by"], first["model_version"]) == ("champion", "3")
    assert first["precision_review_low"] <= first["precision_review"] <= first["precision_review_high"]
    json.dumps(rows, allow_nan=False)  # NaN (e.g. a decline precision without verdicts) is null


def test_jsonable_is_strict_json() -> None:
    value = {
        "nan": math.nan,
        "inf": np.float64("inf"),
        "int": np.int64(3),
        "when": pd.Timestamp("2026-01-01", tz="UTC"),
        "nat": pd.NaT,
        "arr": np.array([1.0, np.nan]),
        7: (True, None),
    }
    assert json.loads(json.dumps(jsonable(value), allow_nan=False)) == {
        "nan": None,
        "inf": None,
        "int": 3,
        "when": "2026-01-01T00:00:00+00:00",
        "nat": None,
        "arr": [1.0, None],
        "7": [True, None],
    }


HOSTILE = '<script>alert("x")</script>'


def test_every_text_is_escaped() -> None:
    snapshot = {
        "champion": {"version": HOSTILE, "model_type": HOSTILE},
        "event_time": HOSTILE,
        "drift": {
            "alarm": True,
            "alarmed_features": [HOSTILE],
            "features": [
                {"feature": HOSTILE, "psi": 0.5, "ks_pvalue": 0.0, "alarmed": True, "psi_history": [0.5]}
            ],
        },
        "reports": [{"name": f"{HOSTILE}.html", "at": HOSTILE, "features": [HOSTILE]}],
        "performance": {"expected": [{"day": "2026-01-01", "served_by": HOSTILE, "model_version": HOSTILE}]},
        "skew": {"checked": HOSTILE, "features": [{"feature": HOSTILE, "mismatch_share": 0.1}]},
        "canary": {"state": HOSTILE, "verdict": HOSTILE, "checks": [{"name": HOSTILE, "value": HOSTILE}]},
        "audit": [{"actor": HOSTILE, "action": HOSTILE, "reason": HOSTILE, "versions": {HOSTILE: HOSTILE},
                   "numbers": {HOSTILE: HOSTILE}, "at": HOSTILE}],
    }  # fmt: skip
    page = render_page(snapshot)
    assert "<script" not in page and 'alert("x")' not in page
    assert page.count("&lt;script&gt;") >= 15
    assert "/reports/" not in section(page, "drift")  # a name that is no file name is not linked
    assert_well_formed(page)


def test_a_broken_part_stays_in_its_section() -> None:
    page = render_page(
        {
            "champion": "not a dict",
            "counts": [1, 2],
            "drift": "garbage",
            "skew": {"features": ["not a row", {"feature": "amount_log", "mismatch_share": "n/a"}]},
            "canary": {"state": "canary", "percent": "25", "checks": [{"name": "latency", "value": None}]},
            "audit": [{"at": 12, "numbers": [1, 2]}],
        }
    )
    assert_well_formed(page)
    assert "could not be drawn" in section(page, "drift")
    for anchor in ("canary", "skew", "performance", "audit"):
        assert "could not be drawn" not in section(page, anchor), anchor
    assert "amount_log" in section(page, "skew") and "25 %" in section(page, "canary")


def test_sparkline_breaks_at_missing_windows_and_marks_the_latest() -> None:
    line = sparkline([0.1, None, 0.05, 0.3, math.nan], threshold=0.2)
    assert line.count("<polyline") == 1  # [0.05, 0.3]; 0.1 stands alone before the gap
    assert 'class="dot over"' in line  # the latest known value, 0.3, is above the threshold
    assert "0.050 to 0.300" in line
    assert sparkline([]) == '<span class="none">no history</span>'
    assert 'class="dot under"' in sparkline([0.01])
