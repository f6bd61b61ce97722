"""How `benchmarks.readme_table` writes one figure: numbers with their units, mixes, ramps."""

from __future__ import annotations

from typing import Any


def number(value: float) -> str:
    """Three significant figures, thousands separated; integers exactly."""
    if isinstance(value, int):
        return f"{value:,}"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return "0" if value == 0 else f"{value:.3g}"


def _quantity(value: float, unit: str) -> str:
    if unit == "count":
        return f"{round(value):,}" if float(value).is_integer() else number(value)
    if unit == "s":
        return f"{number(value * 1e3)} ms" if abs(value) < 1 else f"{number(value)} s"
    if unit == "MB":
        return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:.0f} MB"
    if unit == "×":
        return f"{number(value)}×"
    if unit == "share":
        return f"{100 * value:.1f} %"
    return f"{number(value)} {unit}".rstrip()


def mix(values: dict[str, Any]) -> str:
    """``{"approve": 0.971, ...}`` → "approve 97.1 %, ..."; counts or nested dicts as they are."""
    if not values:
        return "—"
    numeric = [v for v in values.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    shares = len(numeric) == len(values) and all(0 <= v <= 1 for v in numeric)
    return ", ".join(
        f"{k} ({mix(v)})" if isinstance(v, dict) else f"{k} {format_value(v, 'share' if shares else '')}"
        for k, v in values.items()
    )


def ramp(steps: list[dict[str, Any]]) -> str:
    """The saturation ramp's steps: "1,000 req/s p99 30.7 ms, 1,080 req/s p99 4,502 ms 151 errors"."""
    parts = []
    for step in steps:
        text = f"{format_value(step.get('target_rps'), 'req/s')} p99 {format_value(step.get('p99_ms'), 'ms')}"
        if step.get("errors"):
            text += f" {format_value(step['errors'], 'count')} errors"
        parts.append(text)
    return "; ".join(parts)


def format_value(value: Any, unit: str = "") -> str:
    """One JSON value in the key's unit ("s", "ms", "µs", "MB", "×", "share", "count",
    "events/s", ...; "mix" for a dict of shares, "ramp" for the saturation steps)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return mix(value)
    if isinstance(value, list):
        if unit == "ramp" and all(isinstance(step, dict) for step in value):
            return ramp(value)
        return "[" + ", ".join(format_value(v, unit) for v in value) + "]"
    if isinstance(value, int | float):
        return _quantity(value, unit)
    return str(value)


def runs_range(runs: list[Any], unit: str) -> str:
    """ "5 runs: 2.80 s – 3.10 s", or "1 run"."""
    numeric = [v for v in runs if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(runs) == 1 or len(numeric) != len(runs):
        return f"{len(runs)} run" + ("s" if len(runs) != 1 else "")
    return f"{len(runs)} runs: {format_value(min(numeric), unit)} – {format_value(max(numeric), unit)}"
