"""The monitor's page: one self-contained HTML document rendered from the monitor's snapshot.

The snapshot is a plain dict the monitor builds each time the page is asked for (its shape is
`render_page`'s docstring); this module only draws it. Design choices:

* Self-contained: inline CSS and inline SVG, no JavaScript, nothing fetched from elsewhere
  (the machine may be offline, and a page that loads no script has nothing to break). The
  server adds a Content-Security-Policy that forbids any load, so a slip would show.
* Every section is drawn on its own, and a missing or empty part reads "none yet": the page of
  a monitor that has just started is still a page. A section that cannot be drawn (a bug,
  a field of the wrong type) shows that, in place, and the rest of the page is drawn.
* Every piece of text from the snapshot goes through `html.escape`: feature names, reasons
  and actors come from records other processes wrote.
* A meta refresh every `REFRESH_SECONDS`: the page follows the monitor without any script.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from monitoring.drift import DriftThresholds

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10
PSI_THRESHOLD = DriftThresholds().psi  # what the page explains; the monitor's may be sent in the snapshot
KS_PVALUE = DriftThresholds().ks_pvalue
# A report's file name as the monitor writes it (drift-20260105T0600.html): what the page links
# and the server serves; anything else is neither linked nor served (no path in a name).
REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.html")
SKEW_ROWS = 10  # the skew table's most mismatching features; the rest are summed up in a line
AUDIT_ROWS = 50
PALETTE = ("#1f6fb2", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#5c940d")

NONE_YET = '<p class="none">none yet</p>'


# --- the snapshot as JSON ---------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """``value`` with only JSON types left: NaN and infinities become null, times ISO strings,
    numpy scalars and arrays Python numbers and lists (what ``/api/snapshot`` sends)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | np.ndarray | pd.Series):
        return [jsonable(v) for v in value]
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):  # pd.Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def records(frame: pd.DataFrame | None) -> list[dict[str, Any]]:
    """A table of `monitoring.performance` (``estimate``, ``matured``) as the snapshot's rows:
    the index (day, served_by, model_version) as columns, JSON types only."""
    if frame is None or frame.empty:
        return []
    flat = frame.reset_index() if any(name is not None for name in frame.index.names) else frame
    return [jsonable(row) for row in flat.to_dict("records")]


# --- formatting -------------------------------------------------------------------------------
def drift_rows(
    results: Iterable[Any],
    active: Iterable[str],
    psi_history: Mapping[str, Sequence[float]],
    alarmable: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The drift table's rows from one window's `ColumnDrift` results, by PSI, largest first.

    ``active``: the columns in alarm; ``alarmable``: the columns that may alarm (None: all).
    """
    active, allowed = set(active), None if alarmable is None else set(alarmable)

    def finite(value: float) -> float | None:
        return None if value is None or not math.isfinite(value) else float(value)

    return [
        {
            "feature": r.column,
            "psi": finite(r.psi),
            "ks_pvalue": finite(r.ks_pvalue),
            "drifted": bool(r.drifted),
            "alarmed": r.column in active,
            "alarmable": allowed is None or r.column in allowed,
            "psi_history": [finite(v) for v in psi_history.get(r.column, [])],
        }
        for r in sorted(results, key=lambda r: -r.psi)
    ]


def _e(value: Any) -> str:
    return "" if value is None else html.escape(str(value))


def _num(value: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, text, a list)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fixed(value: Any, digits: int = 3) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _percent(value: Any, digits: int = 1) -> str:
    number = _num(value)
    return "–" if number is None else f"{100 * number:.{digits}f} %"


def _pvalue(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "–"
    if number < 1e-10:
        return "&lt; 1e-10"
    return f"{number:.3f}" if number >= 0.001 else f"{number:.1e}"


def _value(value: Any) -> str:
    """Any value of a check or an audit entry, escaped, in a few characters."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "–"
    if value is None:
        return "–"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(jsonable(value), separators=(",", ":"))
        return _e(text if len(text) <= 80 else text[:79] + "…")
    return _e(value)


def _moment(value: Any) -> datetime | None:
    """A time from the snapshot: a datetime, an ISO string, or epoch seconds/milliseconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    elif (number := _num(value)) is not None:
        moment = datetime.fromtimestamp(number / 1000 if number > 1e11 else number, UTC)
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _when(value: Any) -> str:
    moment = _moment(value)
    if moment is None:
        return _e(value) if value else "–"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_e(text)}</span>'


def _rows(part: Any) -> list[Mapping[str, Any]]:
    """The dict rows of a list in the snapshot (anything else in it is skipped)."""
    return [row for row in part if isinstance(row, Mapping)] if isinstance(part, list) else []


def _table(head: Sequence[str], body: Iterable[str], cls: str = "") -> str:
    header = "".join(f"<th>{h}</th>" for h in head)
    return f'<table class="{cls}"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# --- inline SVG -------------------------------------------------------------------------------
def sparkline(
    values: Sequence[Any], threshold: float = PSI_THRESHOLD, width: int = 150, height: int = 18
) -> str:
    """PSI over the last windows (oldest first) as a small line, with the threshold dashed."""
    points = [_num(v) for v in values]
    known = [p for p in points if p is not None]
    if not known:
        return '<span class="none">no history</span>'
    top = max(threshold * 1.5, max(known)) * 1.05
    pad = 2

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / (len(points) - 1) if len(points) > 1 else 0.5)
        return x, height - pad - (height - 2 * pad) * v / top

    segments: list[list[tuple[float, float]]] = [[]]
    for i, v in enumerate(points):
        if v is None:
            segments.append([])
        else:
            segments[-1].append(xy(i, v))
    lines = "".join(
        f'<polyline points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in s)}" class="spark"/>'
        for s in segments
        if len(s) > 1
    )
    last_i = max(i for i, v in enumerate(points) if v is not None)
    last_v = points[last_i]
    assert last_v is not None
    lx, ly = xy(last_i, last_v)
    ty = xy(0, threshold)[1]
    over = "over" if last_v > threshold else "under"
    label = f"PSI over the last {len(points)} windows: {min(known):.3f} to {max(known):.3f}"
    return (
        f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>'
        f'<line x1="0" x2="{width}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>{lines}'
        f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.5" class="dot {over}"/></svg>'
    )


def _y_ticks(value: float) -> list[float]:
    """Round ticks from 0 to just above ``value`` (a share: 1 at most), four or five of them."""
    top = min(1.0, max(value * 1.05, 0.01))
    step = next(s for s in (0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25) if top / s <= 5)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


def line_plot(
    series: Sequence[Mapping[str, Any]],
    title: str,
    unmatured_from: datetime | None = None,
    width: int = 580,
    height: int = 250,
) -> str:
    """Days on x, a share on y. Each series: ``color``, ``points`` [(day, value, low, high)]
    drawn solid with its interval as a band, ``expected`` [(day, value)] drawn dashed.
    Days from ``unmatured_from`` on are shaded: their labels are still arriving."""
    days = [p[0] for s in series for p in (*s["points"], *s["expected"])]
    values = [v for s in series for p in s["points"] for v in p[1:] if v is not None]
    values += [p[1] for s in series for p in s["expected"] if p[1] is not None]
    if not days or not values:
        return NONE_YET
    left, right, top, bottom = 44, 12, 22, 30
    first, last = min(days), max(days)
    span = max((last - first).total_seconds(), 86_400.0)
    ticks = _y_ticks(max(values))
    y_top = ticks[-1]

    def x(day: datetime) -> float:
        return left + (width - left - right) * (day - first).total_seconds() / span

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - value / y_top)

    parts = [f'<text x="{left}" y="14" class="plot-title">{_e(title)}</text>']
    if unmatured_from is not None and unmatured_from <= last:
        x0 = x(max(unmatured_from, first))
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{width - right - x0:.1f}" height="{height - top - bottom}" '
            f'class="unmatured"/><text x="{width - right - 4}" y="{top + 12}" class="axis" '
            f'text-anchor="end">labels still arriving</text>'
        )
    decimals = 0 if ticks[1] >= 0.01 else 1
    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="axis" text-anchor="end">'
            f"{100 * tick:.{decimals}f}%</text>"
        )
    n_ticks = min(6, round(span / 86_400) + 1)
    for i in range(n_ticks):
        day = first + (last - first) * (i / max(n_ticks - 1, 1))
        anchor = "start" if i == 0 else "end" if i == n_ticks - 1 else "middle"
        parts.append(
            f'<text x="{x(day):.1f}" y="{height - 10}" class="axis" text-anchor="{anchor}">{day:%m-%d}</text>'
        )
    for s in series:
        color = _e(s["color"])
        band = [(d, lo, hi) for d, _, lo, hi in s["points"] if lo is not None and hi is not None]
        if len(band) > 1:
            outline = [(x(d), y(hi)) for d, _, hi in band] + [(x(d), y(lo)) for d, lo, _ in reversed(band)]
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in outline)
            parts.append(f'<polygon points="{path}" fill="{color}" class="band"/>')
        expected = [(x(d), y(v)) for d, v in s["expected"] if v is not None]
        if len(expected) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in expected)
            parts.append(f'<polyline points="{path}" stroke="{color}" class="expected"/>')
        realised = [(x(d), y(v)) for d, v, _, _ in s["points"] if v is not None]
        if len(realised) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in realised)
            parts.append(f'<polyline points="{path}" stroke="{color}" class="realised"/>')
        parts.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.2" fill="{color}"/>' for px, py in realised)
    return (
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>{"".join(parts)}</svg>'
    )


# --- the sections -----------------------------------------------------------------------------
def _model(arm: Any) -> str:
    if not isinstance(arm, Mapping) or arm.get("version") in (None, ""):
        return '<span class="none">none</span>'
    kind = f' <span class="muted">{_e(arm.get("model_type"))}</span>' if arm.get("model_type") else ""
    return f"v{_e(arm['version'])}{kind}"


def _header(snapshot: Mapping[str, Any]) -> str:
    counts = snapshot.get("counts")
    counts = counts if isinstance(counts, Mapping) else {}
    canary = _num(snapshot.get("canary_percent"))
    clock = snapshot.get("event_time")
    tiles = [
        ("champion", _model(snapshot.get("champion"))),
        ("challenger", _model(snapshot.get("challenger"))),
        ("canary share", '<span class="none">none</span>' if canary is None else f"{canary:g} %"),
        ("monitor clock (event time)", _when(clock) if clock else '<span class="none">none yet</span>'),
    ]
    for key, name in (
        ("predictions", "predictions"),
        ("labels", "labels"),
        ("labelled_predictions", "labelled predictions"),
        ("windows_evaluated", "drift windows"),
    ):
        tiles.append((name, _value(counts.get(key, 0))))
    body = "".join(
        f'<div class="tile"><div class="k">{k}</div><div class="v">{v}</div></div>' for k, v in tiles
    )
    return (
        f'<header><h1>Fraud scoring · monitor</h1><div class="tiles">{body}</div>'
        f'<p class="muted">page generated {_when(snapshot.get("generated_at"))} (wall clock), refreshed '
        f'every {REFRESH_SECONDS} s · <a href="/api/snapshot">/api/snapshot</a> (JSON) · '
        f'<a href="/metrics">/metrics</a> (Prometheus)</p></header>'
    )


def _report_link(report: Mapping[str, Any]) -> str:
    name = str(report.get("name", ""))
    label = _e(name)
    if REPORT_NAME.fullmatch(name):
        label = f'<a href="/reports/{_e(quote(name))}">{label}</a>'
    features = report.get("features") or []
    named = ", ".join(_e(f) for f in features) if isinstance(features, list) else ""
    about = _when(report.get("at")) + (f" · {named}" if named else "")
    return f'<li>{label} <span class="muted">{about}</span></li>'


def _drift(snapshot: Mapping[str, Any]) -> str:
    drift = snapshot.get("drift") or {}
    reports = _rows(snapshot.get("reports"))
    links = (
        f'<p><b>Evidently reports</b> (latest first):</p><ul class="reports">'
        f"{''.join(_report_link(r) for r in reports[:5])}</ul>"
        if reports
        else '<p><b>Evidently reports:</b> <span class="none">none yet</span> (one is saved at each alarm)'
        "</p>"
    )
    features = _rows(drift.get("features"))
    if not features:
        return f"{NONE_YET}{links}"
    threshold = _num(drift.get("psi_threshold")) or PSI_THRESHOLD
    alarmed = [str(f) for f in drift.get("alarmed_features") or []]
    state = (
        _badge("ALARM", "bad") + " sustained drift on " + ", ".join(f"<b>{_e(f)}</b>" for f in alarmed)
        if drift.get("alarm")
        else _badge("no alarm", "ok")
    )
    ordered = sorted(features, key=lambda f: -(_num(f.get("psi")) or -1.0))
    body = []
    for f in ordered:
        psi_value = _num(f.get("psi"))
        status = (
            _badge("alarm", "bad")
            if f.get("alarmed")
            else _badge("drifted", "warn")
            if f.get("drifted")
            else _badge("ok", "ok")
        )
        history = f.get("psi_history")
        history = history if isinstance(history, list) else []
        high = ' class="high"' if psi_value is not None and psi_value > threshold else ""
        row = ' class="alarmed"' if f.get("alarmed") else ""
        body.append(
            f'<tr{row}><td class="name">{_e(f.get("feature"))}</td>'
            f'<td class="num"><span{high}>{_fixed(psi_value)}</span></td>'
            f"<td>{sparkline(history, threshold)}</td>"
            f'<td class="num">{_pvalue(f.get("ks_pvalue"))}</td><td>{status}</td></tr>'
        )
    return (
        f"<p>window ending {_when(drift.get('window_end'))} · {state}</p>"
        f'<p class="muted">A column drifts when PSI &gt; {threshold:g} and the KS p-value &lt;'
        f" {KS_PVALUE:g} in one window; an alarm needs several drifted windows in a row. Sparkline:"
        f" PSI per window, dashed line at {threshold:g}.</p>"
        + _table(["feature", "PSI", "PSI per window", "KS p", ""], body, "drift")
        + links
    )


def _series_key(row: Mapping[str, Any]) -> tuple[str, str] | None:
    version = row.get("model_version")
    if version in (None, "", "rules") or _moment(row.get("day")) is None:
        return None  # rules-decided rows: their score is points, not a probability
    return str(row.get("served_by")), str(version)


def _by_series(
    rows: list[Mapping[str, Any]],
) -> dict[tuple[str, str], list[tuple[datetime, Mapping[str, Any]]]]:
    """Rows per (served_by, model_version), each list in day order."""
    out: dict[tuple[str, str], list[tuple[datetime, Mapping[str, Any]]]] = {}
    for row in rows:
        key, day = _series_key(row), _moment(row.get("day"))
        if key is not None and day is not None:
            out.setdefault(key, []).append((day, row))
    return {k: sorted(v, key=lambda pair: pair[0]) for k, v in out.items()}


def _performance_series(
    expected: list[Mapping[str, Any]], realised: list[Mapping[str, Any]], metric: str, expected_metric: str
) -> list[dict[str, Any]]:
    """One plotted series per (served_by, model_version), the champion first."""
    guessed, seen = _by_series(expected), _by_series(realised)
    keys = sorted({*guessed, *seen}, key=lambda k: (k[0] != "champion", k[0], k[1]))
    return [
        {
            "key": key,
            "color": PALETTE[i % len(PALETTE)],
            "points": [
                (day, _num(r.get(metric)), _num(r.get(f"{metric}_low")), _num(r.get(f"{metric}_high")))
                for day, r in seen.get(key, [])
            ],
            "expected": [
                (day, _num(r.get(expected_metric)))
                for day, r in guessed.get(key, [])
                if r.get("scores_calibrated", True) is not False
            ],
        }
        for i, key in enumerate(keys)
    ]


def _interval(row: Mapping[str, Any], metric: str, fmt: Callable[[Any], str] = _percent) -> str:
    low, high = row.get(f"{metric}_low"), row.get(f"{metric}_high")
    band = f' <span class="muted">[{fmt(low)}, {fmt(high)}]</span>' if _num(low) is not None else ""
    return f"{fmt(row.get(metric))}{band}"


def _swatch(color: str, dashed: bool) -> str:
    """A line sample for the legend, drawn as the plot draws it."""
    kind = "expected" if dashed else "realised"
    return (
        f'<svg class="plot swatch" width="26" height="10" viewBox="0 0 26 10">'
        f'<line x1="1" x2="25" y1="5" y2="5" stroke="{_e(color)}" class="{kind}"/></svg>'
    )


def _money(value: Any) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:,.0f}"


def _performance(snapshot: Mapping[str, Any]) -> str:
    performance = snapshot.get("performance") or {}
    expected, realised = _rows(performance.get("expected")), _rows(performance.get("matured"))
    note = (
        '<p class="note">The dashed line is the label-free estimate (CBPE: what the calibrated scores'
        " promise), there at once for every day; the solid line and its band are the matured cohorts'"
        " realised value with its 95 % bootstrap interval. <b>The estimate is blind to concept drift:</b> a"
        " new fraud pattern the model scores low keeps the scores calibrated-looking while the real recall"
        " falls, and the gap closes only once the labels mature. <b>Declined transactions never get a"
        " chargeback</b> (they never settle), so they count as unlabelled, never as legitimate: recall here"
        " is review's recall over the approved and reviewed rows. Rules-decided rows (fallback, kill"
        " switch) are left out of the plots.</p>"
    )
    if not expected and not realised:
        return NONE_YET + note
    seen = _by_series(realised)
    # Days after the latest matured one are shaded: only the estimate speaks for them yet.
    matured_days = [day for rows in seen.values() for day, _ in rows]
    expected_days = [day for rows in _by_series(expected).values() for day, _ in rows]
    unmatured_from = (
        max(matured_days) + pd.Timedelta(days=1) if matured_days else min(expected_days, default=None)
    )
    plots = []
    legend: list[str] = []
    for metric, expected_metric, title in (
        ("precision_review", "expected_precision_review", "precision of review, per decision day"),
        ("recall_review", "expected_recall_review", "recall of review (approved + reviewed fraud)"),
    ):
        series = _performance_series(expected, realised, metric, expected_metric)
        plots.append(line_plot(series, title, unmatured_from))
        legend = [
            f'<span class="key"><b>{_e(s["key"][0])} v{_e(s["key"][1])}</b> '
            f"{_swatch(s['color'], dashed=False)} matured (band: 95 % interval) "
            f"{_swatch(s['color'], dashed=True)} expected (CBPE)</span>"
            for s in series
        ]
    share = _num(performance.get("label_share"))
    share_line = (
        f"<p>Share of a matured day's fraud labels expected to have arrived: <b>{_percent(share, 0)}</b>"
        " (label delay).</p>"
        if share is not None
        else ""
    )
    latest = {key: rows[-1][1] for key, rows in seen.items()}
    rows = [
        f"<tr><td>{_when(r.get('day'))[:10]}</td><td>{_e(k[0])}</td><td>v{_e(k[1])}</td>"
        f'<td class="num">{_value(r.get("rows"))}</td><td>{_interval(r, "precision_review")}</td>'
        f'<td>{_interval(r, "recall_review")}</td><td class="num">{_fixed(r.get("average_precision"))}</td>'
        f'<td class="num">{_fixed(r.get("card_precision_at_k"))}</td>'
        f"<td>{_interval(r, 'savings_review', _money)}</td>"
        f'<td class="num">{_percent(r.get("label_share"), 0)}</td></tr>'
        for k, r in latest.items()
    ]
    table = (
        "<h3>Latest matured day</h3>"
        + _table(
            [
                "day",
                "served by",
                "version",
                "rows",
                "precision (review)",
                "recall (review)",
                "AP",
                "card prec.@k",
                "savings (review)",
                "labels in",
            ],
            rows,
        )
        if rows
        else '<p>Matured cohorts: <span class="none">none yet</span> (a day matures once most of its labels'
        " have arrived)</p>"
    )
    plotted = f'<div class="plots">{"".join(plots)}</div><p class="legend">{"".join(legend)}</p>'
    return plotted + note + share_line + _missed_fraud(performance.get("missed_fraud") or {}) + table


def _missed_fraud(missed: Mapping[str, Any]) -> str:
    """What only the labels can say: fraud the champion's scores did not expect."""
    latest = missed.get("latest") or {}
    if not latest:
        return ""
    state = (
        f'<span class="badge bad">ALARM</span> since {_e(str(missed.get("since"))[:10])}'
        if missed.get("alarm")
        else "no alarm"
    )
    return (
        f"<p>Missed fraud ({state}): among the passed transactions of the {_value(missed.get('pooled_days'))}"
        f" matured days to {_e(latest.get('last_day'))}, the champion's scores expected"
        f" <b>{_fixed(latest.get('expected_fraud'), 1)}</b> frauds; the labels in so far"
        f" ({_percent(latest.get('label_share'), 0)} of them) point to"
        f" <b>{_fixed(latest.get('found_fraud'), 1)}</b>"
        f" (z {_fixed(latest.get('z'), 1)}; an alarm at z ≥ 3 on consecutive matured days, and a"
        " retraining).</p>"
    )


def _skew(snapshot: Mapping[str, Any]) -> str:
    skew = snapshot.get("skew") or {}
    features = _rows(skew.get("features"))
    if not features:
        return NONE_YET
    ordered = sorted(features, key=lambda f: (-(_num(f.get("mismatch_share")) or 0.0), str(f.get("feature"))))
    body = [
        f'<tr><td class="name">{_e(f.get("feature"))}</td>'
        f'<td class="num{" high" if (_num(f.get("mismatch_share")) or 0) > 0 else ""}">'
        f"{_percent(f.get('mismatch_share'))}</td>"
        f'<td class="num">{_value(f.get("max_abs_difference"))}</td></tr>'
        for f in ordered[:SKEW_ROWS]
    ]
    rest = ordered[SKEW_ROWS:]
    more = ""
    if rest:
        clean = all((_num(f.get("mismatch_share")) or 0.0) == 0 for f in rest)
        more = f'<p class="muted">and {len(rest)} more feature(s){", all matching" if clean else ""}.</p>'
    return (
        f"<p>{_value(skew.get('checked'))} served vectors recomputed offline (Feast point-in-time join),"
        f" last at {_when(skew.get('at'))}</p>"
        + _table(["feature", "mismatching rows", "largest difference"], body)
        + more
    )


VERDICTS = {"pass": "ok", "marginal": "warn", "fail": "bad", "pending": "muted"}


def _canary(snapshot: Mapping[str, Any]) -> str:
    canary = snapshot.get("canary") or {}
    if not canary:
        return NONE_YET
    verdict = canary.get("verdict")
    verdict_badge = (
        _badge(str(verdict), VERDICTS.get(str(verdict), "muted"))
        if verdict
        else _badge("no verdict", "muted")
    )
    checks = _rows(canary.get("checks"))
    body = [
        f'<tr><td class="name">{_e(c.get("name"))}</td><td class="num">{_value(c.get("value"))}</td>'
        f'<td class="num">{_value(c.get("threshold"))}</td>'
        f"<td>{_badge(str(c.get('outcome')), VERDICTS.get(str(c.get('outcome')), 'muted'))}</td>"
        f"<td>{'critical' if c.get('critical') else ''}</td></tr>"
        for c in checks
    ]
    share = _num(canary.get("percent"))
    return (
        f"<p>state <b>{_e(canary.get('state') or '–')}</b>"
        f" · share <b>{'–' if share is None else f'{share:g} %'}</b>"
        f" · verdict {verdict_badge}</p>"
        + (
            _table(["check", "value", "threshold", "outcome", ""], body)
            if body
            else "<p>checks: " + NONE_YET + "</p>"
        )
    )


def _versions(versions: Any) -> str:
    if isinstance(versions, Mapping):
        return ", ".join(f"{_e(k)} <b>{_e(v)}</b>" for k, v in versions.items() if v is not None) or "–"
    return _value(versions)


def _numbers(numbers: Any) -> str:
    if not isinstance(numbers, Mapping) or not numbers:
        return _value(numbers) if numbers else ""
    items = list(numbers.items())
    shown = ", ".join(f"{_e(k)}={_value(v)}" for k, v in items[:6])
    return shown + (f" (+{len(items) - 6})" if len(items) > 6 else "")


ACTION_KINDS = {"rollback": "bad", "canary_stop": "bad", "drift_alarm": "warn", "retrain_rejected": "warn"}


def _audit(snapshot: Mapping[str, Any]) -> str:
    """Who, what, why, when, which versions; in a scrolling box beside the drift table."""
    entries = _rows(snapshot.get("audit"))[:AUDIT_ROWS]
    if not entries:
        return NONE_YET
    body = [
        f'<tr><td class="when">{_when(a.get("at"))}<br><span class="muted">{_e(a.get("actor"))}</span></td>'
        f"<td>{_badge(str(a.get('action')), ACTION_KINDS.get(str(a.get('action')), 'info'))}"
        f'<br><span class="versions">{_versions(a.get("versions"))}</span></td>'
        f'<td>{_e(a.get("reason"))}<div class="numbers">{_numbers(a.get("numbers"))}</div></td></tr>'
        for a in entries
    ]
    table = _table(["when · who", "what · versions", "why · numbers"], body, "audit")
    return f'<div class="scroll">{table}</div>'


def _section(
    anchor: str, title: str, draw: Callable[[Mapping[str, Any]], str], snapshot: Mapping[str, Any]
) -> str:
    try:
        body = draw(snapshot)
    except Exception as error:  # one broken part must not take the page down
        log.exception("monitor page: the %s section failed", anchor)
        body = (
            f'<p class="error">this section could not be drawn: {_e(type(error).__name__)}: {_e(error)}</p>'
        )
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def render_page(snapshot: Mapping[str, Any] | None) -> str:
    """The page for one snapshot of the monitor (any part may be missing or empty).

    The snapshot: ``generated_at`` (wall clock) and ``event_time`` (the monitor's clock: the
    latest event time consumed), ``champion`` / ``challenger`` ({version, model_type} or None),
    ``canary_percent``, ``counts`` {predictions, labels, labelled_predictions,
    windows_evaluated}, ``drift`` {window_end, alarm, alarmed_features, psi_threshold
    (optional), features: [{feature, psi, ks_pvalue, drifted, alarmed, psi_history}]},
    ``reports`` [{name, at, features}] latest first, ``performance`` {expected, matured:
    `records` of `monitoring.performance.estimate` / `.matured`, label_share}, ``skew``
    {checked, at, features: [{feature, mismatch_share, max_abs_difference}]}, ``canary``
    {state, percent, verdict, checks: [{name, value, threshold, outcome, critical}]},
    ``audit`` (entries of `monitoring.audit.read`, latest first).
    """
    snapshot = snapshot if isinstance(snapshot, Mapping) else {}
    champion = snapshot.get("champion")
    version = champion.get("version") if isinstance(champion, Mapping) else None
    title = f"Fraud monitor · champion v{version}" if version else "Fraud monitor"
    try:
        header = _header(snapshot)
    except Exception as error:
        log.exception("monitor page: the header failed")
        header = f'<header><h1>Fraud scoring · monitor</h1><p class="error">{_e(error)}</p></header>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>{header}<main>"
        '<div class="columns"><div class="main-col">'
        + _section("drift", "Data drift, latest window vs the champion's reference", _drift, snapshot)
        + '</div><div class="side-col">'
        + _section("canary", "Canary guard", _canary, snapshot)
        + _section("skew", "Training-serving skew", _skew, snapshot)
        + _section("audit", "Audit log: actions on the models (latest first)", _audit, snapshot)
        + "</div></div>"
        + _section(
            "performance", "Performance: matured cohorts and the label-free estimate", _performance, snapshot
        )
        + "</main></body></html>"
    )


CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,"DejaVu Sans",sans-serif;color:#1f2933;background:#f3f5f8}
header{background:#1f2933;color:#f5f7fa;padding:12px 20px 6px}
header h1{margin:0 0 8px;font-size:18px;font-weight:600}
header .muted,header a{color:#aab4c0}
.tiles{display:flex;flex-wrap:wrap;gap:8px}
.tile{background:#2d3a48;border-radius:6px;padding:6px 12px;min-width:120px}
.tile .k{font-size:11px;color:#aab4c0;text-transform:uppercase;letter-spacing:.04em}
.tile .v{font-size:16px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .v .muted{font-size:12px;font-weight:400}
main{padding:12px 20px}
.columns{display:grid;grid-template-columns:minmax(0,7fr) minmax(0,5fr);gap:12px}
section{background:#fff;border:1px solid #dde2e8;border-radius:8px;padding:10px 14px;margin-bottom:12px}
h2{font-size:15px;margin:0 0 6px}
h3{font-size:13px;margin:10px 0 4px}
p{margin:4px 0}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-size:12px;font-weight:600;color:#52606d;padding:3px 6px}
thead th{border-bottom:1px solid #dde2e8}
td{padding:1px 6px;border-bottom:1px solid #f0f2f5;vertical-align:middle}
td.num{text-align:right;white-space:nowrap}
td.name{font-family:"DejaVu Sans Mono",monospace;font-size:12px}
td.when{white-space:nowrap}
.numbers,.versions{font-size:11px;color:#52606d}
.scroll{max-height:600px;overflow-y:auto}
table.audit td{vertical-align:top;padding:3px 6px}
tr.alarmed td{background:#fdecec}
.high{color:#c62828;font-weight:600}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:11px;font-weight:600;color:#fff}
.badge.ok{background:#2f9e44}.badge.warn{background:#e67700}.badge.bad{background:#c62828}
.badge.muted{background:#8a96a3}.badge.info{background:#1f6fb2}
.none{color:#8a96a3;font-style:italic}
.muted{color:#6b7785}
.error{color:#c62828}
.note{background:#fff8e1;border-left:3px solid #e67700;padding:6px 10px;margin:8px 0}
.sparkline .spark{fill:none;stroke:#1f6fb2;stroke-width:1.4}
.sparkline .threshold{stroke:#c62828;stroke-dasharray:3 2;stroke-width:1}
.sparkline .dot.over{fill:#c62828}.sparkline .dot.under{fill:#1f6fb2}
.plots{display:flex;flex-wrap:wrap;gap:16px}
.plot .grid{stroke:#e4e8ed}
.plot .axis{font-size:10px;fill:#6b7785}
.plot .plot-title{font-size:12px;font-weight:600;fill:#1f2933}
.plot .unmatured{fill:#f1f3f5}
.plot .band{opacity:.18;stroke:none}
.plot .realised{fill:none;stroke-width:1.8}
.plot .expected{fill:none;stroke-width:1.5;stroke-dasharray:5 3;opacity:.85}
.legend .key{margin-right:18px;white-space:nowrap}
.swatch{vertical-align:middle;margin:0 2px 0 8px}
ul.reports{margin:2px 0;padding-left:18px}
a{color:#1f6fb2}
"""
