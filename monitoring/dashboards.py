"""The Grafana dashboards (`infra/grafana/dashboards/*.json`) read back: their PromQL, evaluated
against a real Prometheus, and drawn as PNGs.

Grafana runs in the compose stack. Where it does not (no Docker engine, or a laptop running
the embedded profile), `fraudctl dashboards` draws the same panels from the same queries of
the same Prometheus, one PNG per dashboard, and lists any panel whose query returns nothing.
The tests use `empty_queries` the same way: every panel of every dashboard must return data.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from core.settings import PROJECT_ROOT

DASHBOARDS_DIR = PROJECT_ROOT / "infra" / "grafana" / "dashboards"
_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str
    legend: str


def load_dashboards(folder: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Every dashboard JSON in `folder`, by file stem."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    return [
        PanelQuery(
            dashboard["title"],
            panel["title"],
            target["refId"],
            target["expr"],
            target.get("legendFormat", ""),
        )
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def legend(query: PanelQuery, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` replaced by the series' label value."""
    if not query.legend:
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or query.expr[:40]
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), query.legend)


class Prometheus:
    """The two calls of Prometheus's HTTP API that a dashboard makes."""

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=30)

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        reply = self.http.get(f"{self.url}{path}", params=params)
        body = reply.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus refused {params['query']!r}: {body.get('error', reply.text[:200])}")
        return list(body["data"]["result"])

    def instant(self, expr: str) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": expr})

    def range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})


def has_value(series: list[dict[str, Any]]) -> bool:
    """At least one series with a number in it (NaN, as from a quantile of no requests, is not data)."""
    for one in series:
        values = one.get("values") or ([one["value"]] if "value" in one else [])
        if any(not math.isnan(float(v)) for _, v in values):
            return True
    return False


def empty_queries(prometheus: Prometheus, minutes: float = 5.0) -> list[tuple[PanelQuery, str]]:
    """Every panel query of every dashboard that returns no number over the last `minutes`."""
    end = time.time()
    empty = []
    for dashboard in load_dashboards().values():
        for query in panel_queries(dashboard):
            try:
                series = prometheus.range(query.expr, end - minutes * 60, end, 15)
            except ValueError as error:
                empty.append((query, str(error)))
                continue
            if not has_value(series):
                empty.append((query, "no data"))
    return empty


# --- drawing -------------------------------------------------------------------------------------
def render(prometheus: Prometheus, dashboard: dict[str, Any], path: Path, minutes: float = 30.0) -> Path:
    """One PNG of the dashboard: its panels where its grid puts them, from range queries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    end = time.time()
    start, step = end - minutes * 60, max(5.0, minutes * 60 / 240)
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42  # inches per grid row
    figure = plt.figure(figsize=(20, rows * unit_h + 0.8))
    figure.suptitle(f"{dashboard['title']} (last {minutes:.0f} min)", x=0.01, ha="left", fontsize=14)
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    actions = _annotation_times(prometheus, dashboard, start, end, step)
    for panel in panels:
        g = panel["gridPos"]
        pad = 0.012  # of the figure; the left one leaves room for the y tick labels
        left, bottom = g["x"] / 24 + 2.5 * pad, top * (1 - (g["y"] + g["h"]) / rows) + pad * 2.5
        ax = figure.add_axes((left, bottom, g["w"] / 24 - 3.5 * pad, top * g["h"] / rows - pad * 5))
        ax.set_title(panel["title"], fontsize=10, loc="left")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "")
        queries = panel_queries({"title": dashboard["title"], "panels": [panel]})
        if panel["type"] in ("stat", "table"):
            _draw_text(ax, prometheus, panel, queries, unit)
            continue
        # A panel of one series per feature (33) has no readable legend in a picture: the
        # most extreme ones get a colour and a legend line, the others a thin grey line. On a
        # log scale (p-values) the smallest are the extreme ones.
        log_scale = defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log"
        lines = []
        for query in queries:
            for series in prometheus.range(query.expr, start, end, step):
                values = np.array([float(v) for _, v in series["values"]])
                if not np.isnan(values).all():
                    times = pd.to_datetime([t for t, _ in series["values"]], unit="s")
                    extreme = float(np.nanmin(values) if log_scale else np.nanmax(np.abs(values)))
                    lines.append((extreme, times, values, legend(query, series["metric"])))
        lines.sort(key=lambda line: line[0] if log_scale else -line[0])
        for rank, (_, times, values, label) in enumerate(lines):
            if rank < TOP_SERIES:
                ax.plot(times, values, linewidth=1.2, label=label[:40])
            else:
                ax.plot(times, values, linewidth=0.6, color="0.75")
        drawn = len(lines)
        for moment in actions:
            ax.axvline(pd.to_datetime(moment, unit="s"), color="red", linewidth=0.8, alpha=0.5)
        for step_ in defaults.get("thresholds", {}).get("steps", [])[1:]:
            if defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode") == "line":
                ax.axhline(step_["value"], color="red", linestyle="--", linewidth=0.8)
        if log_scale:
            ax.set_yscale("log")
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xlim(pd.to_datetime(start, unit="s"), pd.to_datetime(end, unit="s"))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(labelsize=7)
        ax.set_ylabel(_UNITS.get(unit, ""), fontsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            title = None if drawn <= TOP_SERIES else f"largest {TOP_SERIES} of {drawn} (grey: the rest)"
            ax.legend(fontsize=6, loc="upper left", ncol=2 if drawn > 4 else 1, framealpha=0.6,
                      title=title, title_fontsize=6)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


TOP_SERIES = 8
_UNITS = {"ms": "ms", "s": "seconds", "reqps": "per second", "percentunit": "share", "percent": "%",
          "currencyUSD": "USD"}  # fmt: skip


def _draw_text(
    ax: Any, prometheus: Prometheus, panel: dict[str, Any], queries: list[PanelQuery], unit: str
) -> None:
    """A stat panel's last value, or a table panel's rows, as text."""
    ax.set_axis_off()
    lines = []
    for query in queries:
        for series in prometheus.instant(query.expr):
            value = float(series["value"][1])
            if panel["type"] == "table":
                labels = {
                    k: v for k, v in series["metric"].items() if k not in ("__name__", "job", "instance")
                }
                lines.append(", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
            else:
                lines.append(_format(value, unit, panel))
    text = "\n".join(lines[:4]) or "no data"
    ax.text(0.5, 0.4, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=18 if panel["type"] == "stat" else 10, weight="bold")  # fmt: skip


def _format(value: float, unit: str, panel: dict[str, Any]) -> str:
    if math.isnan(value):
        return "–"
    for mapping in panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
        text = mapping.get("options", {}).get(str(int(value)) if value.is_integer() else "", {}).get("text")
        if text:
            return str(text)
    suffix = {"ms": " ms", "s": " s", "reqps": "/s", "percent": " %"}.get(unit, "")
    return f"{value:,.2f}{suffix}" if abs(value) < 100 else f"{value:,.0f}{suffix}"


def _annotation_times(
    prometheus: Prometheus, dashboard: dict[str, Any], start: float, end: float, step: float
) -> list[float]:
    """When the dashboard's Prometheus annotations (the monitor's automatic actions) fired."""
    moments: list[float] = []
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" not in annotation:
            continue
        for series in prometheus.range(annotation["expr"], start, end, step):
            # One line per event, at its first step: the expression stays > 0 for its range.
            previous = -math.inf
            for t, _ in series["values"]:
                if float(t) - previous > step * 1.5:
                    moments.append(float(t))
                previous = float(t)
    return moments


def cli(
    prometheus: Annotated[
        str, typer.Option(help="Prometheus that scrapes the system (`fraudctl up` starts one if installed).")
    ] = "http://127.0.0.1:9090",
    out: Annotated[Path, typer.Option(help="Folder of the PNGs.")] = Path("var/dashboards"),
    minutes: Annotated[float, typer.Option(help="Time range drawn, up to now.")] = 30.0,
) -> None:
    """Draw the Grafana dashboards' panels from Prometheus as PNGs, and list panels without data.

    The same JSON Grafana provisions (infra/grafana/dashboards), the same PromQL: for a
    machine without Docker, or a screenshot for a write-up.

    Example: fraudctl up && fraudctl dashboards --minutes 15
    """
    import httpx
    from rich.console import Console

    console = Console(highlight=False)
    server = Prometheus(prometheus)
    try:
        empty = empty_queries(server, minutes)
        for name, dashboard in load_dashboards().items():
            path = render(server, dashboard, out / f"{name}.png", minutes)
            console.print(f"[green]✓[/] {dashboard['title']}: {len(dashboard['panels'])} panels → {path}")
    except httpx.HTTPError as error:
        console.print(f"[red]error[/]: Prometheus at {prometheus} does not answer ({error})")
        raise typer.Exit(1) from None
    for query, why in empty:
        console.print(f"  [yellow]{why}[/]: {query.dashboard} / {query.panel} ({query.ref}): {query.expr}")
    if not empty:
        console.print("every panel's query returned data")
