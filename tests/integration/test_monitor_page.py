"""The monitor's page in a real browser, and its server over real HTTP.

The snapshot is computed, not typed: drift from `monitoring.drift.feature_drift` and
`DriftAlarm` over 24 hourly windows of a seeded frame whose amounts shift in the last ones,
an Evidently report of the last window, delayed-label performance from
`monitoring.performance.estimate` and `.matured` over 50 days of calibrated scores with a new
fraud pattern (concept drift) from day 8, skew and canary figures from paired frames, and the
audit trail written and read by `monitoring.audit`. Headless Chromium (Debian's package)
loads the page: its DOM is checked, and its screenshot must be a PNG of the window's size
that is not blank. The screenshot is kept at ``var/screenshots/monitor_page.png`` for a person.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image  # Pillow arrives with MLflow (matplotlib); the test reads the screenshot with it
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats

from core.features import MODEL_FEATURES
from core.settings import Settings
from models.costs import CostModel, Thresholds, decide
from monitoring import audit
from monitoring.drift import DRIFT_COLUMNS, DriftAlarm, evidently_report, feature_drift, publish
from monitoring.http import MonitorHTTPServer, start_monitor_server, stop_monitor_server
from monitoring.metrics import MonitorMetrics
from monitoring.page import drift_rows, jsonable, records
from monitoring.performance import PerformanceSettings, estimate, matured

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "screenshots" / "monitor_page.png"
WINDOW = (1280, 2000)
T0 = pd.Timestamp("2026-01-01", tz="UTC")
THRESHOLDS = Thresholds(review=0.2, decline=0.6)
COST = CostModel(review_cost=5.0, false_decline_share=0.1)
SHIFTED = ("amount_log", "card_amount_sum_24h", "card_amount_max_24h")  # what the amount shift moves
SKEWED = "card_txn_count_1h"  # the feature the "stale online store" gets wrong
CANARY_SHARE = 0.25
INJECTED = "<script>alert('x')</script> & co"  # written by another process: must stay text


# --- a realistic snapshot ---------------------------------------------------------------------
def _features(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    """Feature columns shaped like the model's (flags, counts, amounts); ``shift`` moves the amounts."""
    columns: dict[str, np.ndarray] = {}
    for name in MODEL_FEATURES:
        if name.startswith(("is_", "has_", "channel_is", "merchant_is", "ip_is")) or "_is_new" in name:
            columns[name] = (rng.random(n) < 0.15).astype(float)
        elif "count" in name or "distinct" in name:
            columns[name] = rng.poisson(3.0, n).astype(float)
        elif name == "hour_of_day":
            columns[name] = rng.integers(0, 24, n).astype(float)
        elif "rate" in name:
            columns[name] = rng.beta(1, 60, n)
        elif name == "amount_log" or "amount" in name:
            moved = shift if name in SHIFTED else 0.0
            columns[name] = rng.normal(3.6 + moved, 1.1, n)
        else:
            columns[name] = rng.exponential(3_600.0, n)
    columns["score"] = rng.beta(1, 60 * (1 - shift / 2), n)
    return pd.DataFrame(columns)[DRIFT_COLUMNS]


def _drift_part(
    rng: np.random.Generator, metrics: MonitorMetrics, reports_dir: Path, now: pd.Timestamp
) -> dict[str, Any]:
    """24 hourly windows up to ``now``; the amounts move in the last six."""
    reference = _features(rng, 3_000)
    alarm = DriftAlarm(windows_required=3)
    history: dict[str, list[float]] = {c: [] for c in DRIFT_COLUMNS}
    reports: list[dict[str, Any]] = []  # latest first, as the monitor lists them
    for hour in range(24):
        window = _features(rng, 1_000, shift=0.7 if hour >= 18 else 0.0)
        results = feature_drift(reference, window)
        update = alarm.update((now - pd.Timedelta(hours=23 - hour)).to_pydatetime(), results)
        publish(metrics, results, update)
        for r in results:
            history[r.column].append(r.psi)
        if update.raised:
            moved = sorted(update.raised)
            name = f"drift-{update.window_end:%Y%m%dT%H%M}.html"
            evidently_report(reference, window, columns=[*moved, "hour_of_day"], path=reports_dir / name)
            reports.insert(0, {"name": name, "at": update.window_end.isoformat(), "features": moved})
    return {
        "drift": {
            "window_end": update.window_end.isoformat(),
            "alarm": update.alarmed,
            "alarmed_features": sorted(update.active),
            "features": drift_rows(results, update.active, history),
        },
        "reports": reports,
        "counts_windows": 24,
    }


def _predictions(rng: np.random.Generator, days: int = 50, rows: int = 2_000) -> pd.DataFrame:
    """Calibrated scores (fraud ~ Bernoulli(score)) plus, from day 8, a fraud pattern the model
    scores low; the last 10 days a canary (v4) on `CANARY_SHARE` with the champion's shadow score."""
    n = days * rows
    high = rng.random(n) < 0.04
    score = np.where(high, rng.beta(2, 2, n), rng.beta(1, 200, n))
    day = np.repeat(np.arange(days), rows)
    fraud = (rng.random(n) < score) | (~high & (day >= 8) & (rng.random(n) < 0.004))
    event_time = T0 + pd.to_timedelta(day, unit="D") + pd.to_timedelta(rng.uniform(0, 86_399, n), unit="s")
    delay = np.clip(np.exp(np.log(10) + 0.75 * rng.standard_normal(n)), 1, 59.9)
    canary = (day >= days - 10) & (rng.random(n) < CANARY_SHARE)
    shadow = np.clip(score * np.exp(rng.normal(0, 0.1, n)), 0, 1)  # the other arm, on the same rows
    return pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "card_id": [f"c{c}" for c in rng.integers(0, 6_000, n)],
            "event_time": event_time,
            "score": score,
            "decision": decide(score, THRESHOLDS),
            "served_by": np.where(canary, "canary", "champion"),
            "model_version": np.where(canary, "4", "3"),
            "champion_score": np.where(canary, shadow, np.nan),
            "latency_ms": rng.gamma(4, 0.6, n) + np.where(canary, 0.3, 0.0),
            "amount": np.expm1(rng.normal(3.6, 1.1, n)),
            "is_fraud": np.where(fraud & (rng.random(n) > 0.05), True, np.nan),
            "reported_at": event_time + pd.to_timedelta(delay, unit="D"),
            "source": "chargeback",
        }
    )


def _canary_part(frame: pd.DataFrame) -> dict[str, Any]:
    """The guard's paired checks on the canary's rows: flip rate, KS of the arms, latency, rates."""
    arm = frame[frame["served_by"] == "canary"]
    base = frame[(frame["served_by"] == "champion") & (frame["event_time"] >= arm["event_time"].min())]
    shadow_decision = decide(arm["champion_score"].to_numpy(), THRESHOLDS)
    values = {
        "decision flip rate": float(np.mean(shadow_decision != arm["decision"].to_numpy())),
        "score KS (paired rows)": float(stats.ks_2samp(arm["score"], arm["champion_score"]).statistic),
        "p99 latency ms (canary - champion)": float(
            np.percentile(arm["latency_ms"], 99) - np.percentile(base["latency_ms"], 99)
        ),
        "review rate shift": float(
            (arm["decision"] == "review").mean() - (base["decision"] == "review").mean()
        ),
    }
    thresholds = {
        "decision flip rate": 0.02,
        "score KS (paired rows)": 0.1,
        "p99 latency ms (canary - champion)": 1.0,
        "review rate shift": 0.005,
    }
    checks = [
        {
            "name": name,
            "value": value,
            "threshold": thresholds[name],
            "outcome": "pass" if abs(value) <= thresholds[name] else "fail",
            "critical": name != "review rate shift",
        }
        for name, value in values.items()
    ]
    failed = [c for c in checks if c["outcome"] == "fail"]
    verdict = "fail" if any(c["critical"] for c in failed) else "marginal" if failed else "pass"
    return {"state": "canary", "percent": 100 * CANARY_SHARE, "verdict": verdict, "checks": checks}


def _skew_part(rng: np.random.Generator, at: pd.Timestamp) -> dict[str, Any]:
    """Served vectors against the offline recomputation; the stale store misses recent counts."""
    served = _features(rng, 400).drop(columns="score")
    offline = served.copy()
    stale = rng.random(len(served)) < 0.12
    offline.loc[stale, SKEWED] += rng.integers(1, 4, int(stale.sum()))
    difference = (served - offline).abs()
    return {
        "checked": len(served),
        "at": at.isoformat(),
        "features": [
            {
                "feature": name,
                "mismatch_share": float((difference[name] > 1e-6).mean()),
                "max_abs_difference": float(difference[name].max()),
            }
            for name in MODEL_FEATURES
        ],
    }


def build_snapshot(settings: Settings, metrics: MonitorMetrics, reports_dir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(20260105)
    frame = _predictions(rng)
    now = frame["event_time"].max().ceil("h")
    drift = _drift_part(rng, metrics, reports_dir, now)
    expected = estimate(frame, cost=COST)
    realised = matured(frame, now, COST, PerformanceSettings(n_resamples=200, seed=0))
    alarm_at = pd.Timestamp(drift["reports"][0]["at"])
    psi = {f["feature"]: round(f["psi"], 3) for f in drift["drift"]["features"] if f["alarmed"]}
    audit.record(
        settings,
        "drift_alarm",
        "sustained drift, 3 windows",
        actor="monitor",
        at=alarm_at,
        versions={"champion": "3"},
        numbers=psi,
    )
    audit.record(
        settings,
        "retrain",
        "drift alarm; passed the gate on the out-of-time holdout",
        actor="monitor",
        at=alarm_at + timedelta(minutes=20),
        versions={"champion": "3", "challenger": "4"},
        numbers={"ap_challenger": 0.412, "ap_champion": 0.355},
    )
    audit.record(
        settings,
        "canary_step",
        INJECTED,
        actor="monitor",
        at=alarm_at + timedelta(hours=2),
        versions={"challenger": "4"},
        numbers={"from_percent": 5, "to_percent": 100 * CANARY_SHARE},
    )
    canary = _canary_part(frame)
    labels = int(frame["is_fraud"].notna().sum())
    return {
        "generated_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "event_time": now.isoformat(),
        "champion": {"version": "3", "model_type": "lightgbm"},
        "challenger": {"version": "4", "model_type": "lightgbm"},
        "canary_percent": canary["percent"],
        "counts": {
            "predictions": len(frame),
            "labels": labels,
            "labelled_predictions": labels,
            "windows_evaluated": drift["counts_windows"],
        },
        "drift": drift["drift"],
        "reports": drift["reports"],
        "performance": {
            "expected": records(expected),
            "matured": records(realised),
            "label_share": float(realised["label_share"].iloc[-1]),
        },
        "skew": _skew_part(rng, now - pd.Timedelta(minutes=5)),
        "canary": canary,
        "audit": audit.read(settings, last=50)[::-1],
    }


# --- fixtures ---------------------------------------------------------------------------------
Served = tuple[MonitorHTTPServer, dict[str, Any], Path]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The server on any free port with the realistic snapshot (~30 s: Evidently's import and
    report, 24 drift windows, the matured cohorts' bootstrap)."""
    root = tmp_path_factory.mktemp("monitor-page")
    settings = Settings(profile="embedded", var_dir=root / "var")
    reports_dir = settings.var_dir / "reports"
    reports_dir.mkdir(parents=True)
    metrics = MonitorMetrics()
    snapshot = build_snapshot(settings, metrics, reports_dir)
    server, thread = start_monitor_server(0, metrics.registry, lambda: snapshot, reports_dir)
    yield server, snapshot, reports_dir
    stop_monitor_server(server, thread)


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Served]:
    """The server of a monitor that has just started: an empty registry, a snapshot with a
    NaN in it, one report file, and a file beside the reports folder that must stay unserved."""
    reports_dir = tmp_path / "var" / "reports"
    reports_dir.mkdir(parents=True)
    (reports_dir / "drift-20260101T0000.html").write_text("<html>a report</html>")
    (tmp_path / "var" / "secret.html").write_text("not for the page")
    (reports_dir / "escape.html").symlink_to(tmp_path / "var" / "secret.html")
    snapshot = {"event_time": None, "performance": {"label_share": math.nan}}
    server, thread = start_monitor_server(0, MonitorMetrics().registry, lambda: snapshot, reports_dir)
    yield server, snapshot, reports_dir
    stop_monitor_server(server, thread)


def _get(server: MonitorHTTPServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A raw request: http.client sends the path as given (no normalisation of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run installs it)")
    command = [
        exe,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr[-2000:]}"
    return result


# --- the server, fast -------------------------------------------------------------------------
def test_a_started_monitor_serves_every_route(bare: Served) -> None:
    server, _, _ = bare
    assert server.port > 0  # port 0 asked for any free one; this is the real one
    assert _get(server, "/healthz")[::2] == (200, b"ok\n")
    status, headers, body = _get(server, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"none yet" in body and "default-src 'none'" in headers["Content-Security-Policy"]
    status, headers, body = _get(server, "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1_000
    status, headers, body = _get(server, "/api/snapshot")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"event_time": None, "performance": {"label_share": None}}  # NaN: null
    status, headers, body = _get(server, "/metrics?name[]=fraud_drift_alarm")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert "fraud_drift_alarm" in {f.name for f in text_string_to_metric_families(body.decode())}
    assert _get(server, "/nothing-here")[0] == 404


def test_read_only(bare: Served) -> None:
    server, _, _ = bare
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = _get(server, "/api/snapshot", method=method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD"), method


def test_reports_are_served_by_name_and_paths_refused(bare: Served) -> None:
    server, _, reports_dir = bare
    status, headers, body = _get(server, "/reports/drift-20260101T0000.html")
    assert (status, body) == (200, b"<html>a report</html>")
    assert headers["Content-Type"].startswith("text/html")
    for path in (
        "/reports/../secret.html",
        "/reports/..%2Fsecret.html",
        "/reports/%2e%2e%2fsecret.html",
        "/reports/..%5csecret.html",
        "/reports/%2E%2E/secret.html",
        "/reports//etc/passwd",
        "/reports/%2Fetc%2Fpasswd",
        "/reports/.hidden.html",
        "/reports/escape.html",  # a symlink out of the folder
        "/reports/missing.html",
        "/reports/drift-20260101T0000.htm",
        "/reports/",
    ):
        status, _, body = _get(server, path)
        assert status in (400, 404), path
        assert b"not for the page" not in body and b"root:" not in body, path


def test_a_failing_snapshot_is_a_500_and_the_server_stays_up(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("state is being rebuilt")

    server, thread = start_monitor_server(0, MonitorMetrics().registry, broken, tmp_path)
    try:
        status, _, body = _get(server, "/")
        assert status == 500 and b"state is being rebuilt" in body
        assert _get(server, "/healthz")[0] == 200
    finally:
        stop_monitor_server(server, thread)
    assert not thread.is_alive()


# --- the realistic page, in a browser ---------------------------------------------------------
@pytest.mark.slow
def test_metrics_and_snapshot_over_http(served: Served) -> None:
    server, snapshot, _ = served
    status, headers, body = _get(server, "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    psi = {s.labels["feature"]: s.value for s in families["fraud_drift_psi"].samples}
    assert psi.keys() == set(DRIFT_COLUMNS)
    latest = {f["feature"]: f["psi"] for f in snapshot["drift"]["features"]}
    assert psi == pytest.approx(latest)
    assert families["fraud_drift_alarm"].samples[0].value == 1

    status, _, body = _get(server, "/api/snapshot")
    decoded = json.loads(body, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    assert status == 200 and decoded == jsonable(snapshot)
    assert decoded["performance"]["matured"][0]["day"] == "2026-01-01T00:00:00+00:00"


@pytest.mark.slow
def test_the_evidently_report_is_linked_and_served(served: Served) -> None:
    server, snapshot, reports_dir = served
    name = snapshot["reports"][0]["name"]
    page = urllib.request.urlopen(server.url + "/", timeout=10).read().decode()
    assert f'href="/reports/{name}"' in page
    status, headers, body = _get(server, f"/reports/{name}")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body == (reports_dir / name).read_bytes()
    assert body.lstrip().lower().startswith(b"<!doctype html>")
    assert all(feature.encode() in body for feature in snapshot["reports"][0]["features"])


@pytest.mark.slow
def test_page_renders_in_headless_chromium(served: Served, tmp_path: Path) -> None:
    server, snapshot, _ = served
    dom = _chromium("--dump-dom", server.url + "/", profile=tmp_path / "profile-dom").stdout
    for anchor in ("drift", "canary", "skew", "performance", "audit"):
        assert f'<section id="{anchor}">' in dom
    assert "<script" not in dom  # the injected reason stayed text
    assert "&lt;script&gt;alert('x')&lt;/script&gt; &amp; co" in dom
    assert dom.count('class="sparkline"') == len(DRIFT_COLUMNS)
    assert dom.count('class="plot"') == 2
    assert "blind to concept drift" in dom and "never get a chargeback" in dom
    assert "could not be drawn" not in dom and "none yet" not in dom
    alarmed = snapshot["drift"]["alarmed_features"]
    assert set(SHIFTED) <= set(alarmed)  # the real statistics found what the frame moved
    top = max(snapshot["drift"]["features"], key=lambda f: f["psi"])["feature"]
    assert dom.index(f'<td class="name">{top}</td>') < dom.index('<td class="name">hour_of_day</td>')

    shot = tmp_path / "monitor_page.png"
    _chromium(f"--screenshot={shot}", server.url + "/", profile=tmp_path / "profile-shot")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as image:
        assert image.size == WINDOW
        pixels = np.asarray(image.convert("L"), dtype=float)
    # Not blank: a dark header on top, white cards below, text and lines in between.
    assert pixels.std() > 20, f"screenshot nearly uniform (std {pixels.std():.1f})"
    assert len(np.unique(pixels)) > 50
    assert (pixels[:60] < 80).mean() > 0.5
    assert (pixels[200:] > 240).mean() > 0.5
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
