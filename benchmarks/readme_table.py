"""The README's benchmark table, rendered from `benchmarks/results/*.json`.

The table lives between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->`` in
README.md; nothing in it is typed by hand, so a figure there is always the committed JSON's.
Each row: what was measured, its target (DESIGN.md section 7), the figures with their keys
(the median and the range when the JSON has ``KEY_runs``, and whether a target was met), and
the commit the figures came from ("dirty" if the tree had changes; "—" for a result written
before results recorded their code).

    python -m benchmarks.readme_table            # print the table
    python -m benchmarks.readme_table --write    # rewrite it in README.md (`make bench` does)
    python -m benchmarks.readme_table --check    # exit 1 if README.md differs from the JSON
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.table_format import format_value, runs_range

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Target:
    text: str
    op: str  # "<=" or ">="
    limit: float  # in the key's own unit
    every_run: bool = False  # with KEY_runs, every run must meet it (not just the median)

    def met(self, value: float, runs: list[float] | None) -> bool:
        values = runs if self.every_run and runs else [value]
        return all(v <= self.limit if self.op == "<=" else v >= self.limit for v in values)


# The targets, in one place: DESIGN.md section 7's SLO table; the two memory ceilings are the
# benchmarks' own (bench_simulate, bench_train), not in that table.
TARGETS: dict[str, Target] = {
    "simulate_1m_seconds": Target("≤ 60 s", "<=", 60),
    "simulate_peak_rss_mb": Target("≤ 2 GB", "<=", 2048),
    "stream_events_per_second": Target("≥ 10,000 events/s", ">=", 10_000),
    "freshness_p99_seconds": Target("p99 ≤ 1 s", "<=", 1),
    "train_1m_seconds": Target("≤ 5 min", "<=", 300),
    "train_1m_peak_memory_mb": Target("≤ 8 GB", "<=", 8192),
    "onnx_vs_native_speedup": Target("≥ 20×", ">=", 20),
    "score_p99_ms_at_500rps": Target("p99 ≤ 5 ms in every run", "<=", 5, every_run=True),
    "score_errors_at_500rps": Target("zero errors", "<=", 0, every_run=True),
    "score_p99_ms_at_1000rps": Target("p99 ≤ 5 ms", "<=", 5, every_run=True),
    "score_errors_at_1000rps": Target("zero errors", "<=", 0, every_run=True),
    "score_saturation_rps": Target("≥ 2,000 req/s", ">=", 2000),
    "monitor_events_per_second": Target("≥ 5,000 events/s", ">=", 5000),
    "drift_false_alarms": Target("0 false alarms", "<=", 0),
}


@dataclass(frozen=True)
class Figure:
    key: str
    unit: str = ""  # see table_format.format_value
    bold: bool = False


@dataclass(frozen=True)
class Row:
    what: str
    source: str  # the benchmark, i.e. benchmarks/results/SOURCE.json
    figures: tuple[Figure, ...]
    prefix: str = ""  # also every key starting with this, in the JSON's order (generic format)


def _score_rows(rate: str, what: str) -> list[Row]:
    at = f"at_{rate}rps"
    return [
        Row(
            what,
            "score",
            (
                Figure(f"score_p50_ms_{at}", "ms"),
                Figure(f"score_p99_ms_{at}", "ms", bold=True),
                Figure(f"score_p999_ms_{at}", "ms"),
                Figure(f"score_max_ms_{at}", "ms"),
                Figure(f"score_errors_{at}", "count", bold=True),
                Figure(f"score_achieved_rps_{at}", "req/s"),
                Figure(f"score_{at}_card_history_share", "share"),
                Figure(f"score_{at}_decision_mix", "mix"),
                Figure(f"score_{at}_served_by_mix", "mix"),
            ),
        )
    ]


ROWS: list[Row] = [
    Row(
        "simulate 1,000,000 transactions",
        "simulate",
        (Figure("simulate_1m_seconds", "s", bold=True), Figure("simulate_peak_rss_mb", "MB")),
    ),
    Row(
        "backfill ~1,000,000 transactions: feature logic, offline parquet, materialize",
        "feature_store",
        (
            Figure("backfill_seconds", "s", bold=True),
            Figure("backfill_rows_per_second", "rows/s"),
            Figure("backfill_peak_rss_mb", "MB"),
            Figure("backfill_transactions", "count"),
        ),
    ),
    Row(
        "Feast online read (SQLite), card + merchant + device",
        "feature_store",
        (
            Figure("online_read_p50_ms", "ms"),
            Figure("online_read_p99_ms", "ms", bold=True),
            Figure("online_read_max_ms", "ms"),
            Figure("online_reads", "count"),
        ),
    ),
    Row(
        "stream processor, events published → written online, one process",
        "stream",
        (
            Figure("stream_events_per_second", "events/s", bold=True),
            Figure("stream_events", "count"),
            Figure("stream_seconds", "s"),
        ),
    ),
    Row(
        "freshness at 1,000 transactions/s, publish → written online (the SLO reads the device "
        "view: two hops)",
        "stream",
        (
            Figure("freshness_p99_seconds", "s", bold=True),
            Figure("freshness_card_p50_seconds", "s"),
            Figure("freshness_card_p99_seconds", "s"),
            Figure("freshness_device_p50_seconds", "s"),
        ),
    ),
    Row(
        "training–serving skew of stream-fed features: replay --score at full speed, share of scored "
        "vectors that differ from training's, and from which state",
        "stream_skew",
        (
            Figure("stream_skew_mismatch_share", "share", bold=True),
            Figure("stream_skew_card_mismatch_share", "share"),
            Figure("stream_skew_device_mismatch_share", "share"),
            Figure("stream_skew_merchant_mismatch_share", "share"),
            Figure("stream_skew_request_mismatch_share", "share"),
            Figure("stream_skew_gateway_rps", "req/s"),
            Figure("stream_skew_transactions", "count"),
        ),
    ),
    Row(
        "train on ~1,000,000 transactions end to end: backfill into an empty store, frame, "
        "baselines, LightGBM, MLP, ONNX + parity, MLflow",
        "train",
        (
            Figure("train_1m_seconds", "s", bold=True),
            Figure("train_1m_peak_memory_mb", "MB"),
            Figure("train_transactions", "count"),
        ),
    ),
    Row(
        "ONNX Runtime vs LightGBM `predict_proba`, one row",
        "train",
        (
            Figure("onnx_vs_native_speedup", "×", bold=True),
            Figure("onnx_lightgbm_p50_us", "µs"),
            Figure("native_lightgbm_predict_proba_p50_us", "µs"),
            Figure("onnx_lightgbm_p99_us", "µs"),
            Figure("native_lightgbm_predict_proba_p99_us", "µs"),
        ),
    ),
    Row(
        "MLP ONNX, one row",
        "train",
        (Figure("onnx_mlp_p50_us", "µs", bold=True), Figure("onnx_mlp_p99_us", "µs")),
    ),
    *_score_rows(
        "500",
        "`POST /v1/score`, open loop 500 req/s for 60 s, one process, champion + shadow + "
        "prediction log to Kafka",
    ),
    Row(
        "where a score request's time goes at 500 req/s (the service's stage histograms, mean)",
        "score",
        (
            Figure("score_stage_features_mean_ms", "ms"),
            Figure("score_stage_rules_mean_ms", "ms"),
            Figure("score_stage_model_mean_ms", "ms"),
            Figure("score_fallbacks", "count"),
        ),
    ),
    *_score_rows("1000", "`POST /v1/score`, open loop 1,000 req/s for 60 s, one process"),
    Row(
        "one scoring process, highest rate with p99 ≤ 50 ms (rates rising 8 % until one misses twice)",
        "score",
        (
            Figure("score_saturation_rps", "req/s", bold=True),
            Figure("score_ramp", "ramp"),
            Figure("score_saturation_card_history_share", "share"),
            Figure("score_saturation_decision_mix", "mix"),
        ),
    ),
    Row(
        "scoring traffic: the held-back day, and the champion's decisions on its training vectors",
        "score",
        (
            Figure("card_history_share", "share"),
            Figure("score_decision_mix", "mix"),
            Figure("score_training_decision_mix", "mix"),
        ),
    ),
    Row(
        "monitor, predictions + labels processed; one Evidently drift report, 50,000 rows x every feature",
        "monitor",
        (Figure("monitor_events_per_second", "events/s"), Figure("drift_report_seconds", "s")),
    ),
    Row(
        "drift drills: event-time hours from the drift's start to the first sustained alarm, and which alarm",
        "drift",
        (
            Figure("drift_detection_hours_amount_shift", "h"),
            Figure("drift_detected_by_amount_shift"),
            Figure("drift_detection_hours_new_merchant_mix", "h"),
            Figure("drift_detected_by_new_merchant_mix"),
            Figure("drift_detection_hours_new_fraud_pattern", "h"),
            Figure("drift_detected_by_new_fraud_pattern"),
            Figure("drift_false_alarms", "count", bold=True),
        ),
    ),
]


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every ``NAME.json`` under ``results_dir``, by benchmark name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(results_dir.glob("*.json"))}


def commit_cell(record: dict[str, Any]) -> str:
    code = record.get("code")
    if code is None:
        return "—"  # written before results recorded their code
    if code.get("commit") is None:
        return "unknown (no git)"
    return f"`{code['commit'][:7]}`" + (" dirty" if code.get("dirty") else "")


def _figure(figure: Figure, metrics: dict[str, Any]) -> str:
    value = metrics[figure.key]
    text = format_value(value, figure.unit)
    if figure.bold:
        text = f"**{text}**"
    notes = []
    runs = metrics.get(figure.key + "_runs")
    if isinstance(runs, list) and runs:
        notes.append(runs_range(runs, figure.unit))
    target = TARGETS.get(figure.key)
    if target is not None and isinstance(value, int | float):
        notes.append("met" if target.met(value, runs) else "**missed**")
    return f"`{figure.key}` {text}" + (f" ({'; '.join(notes)})" if notes else "")


def render_row(row: Row, record: dict[str, Any]) -> str | None:
    """One table line, or None when the JSON has none of the row's keys."""
    metrics = record.get("metrics", {})
    figures = [f for f in row.figures if f.key in metrics]
    if row.prefix:
        figures += [Figure(k) for k in metrics if k.startswith(row.prefix) and not k.endswith("_runs")]
    if not figures:
        return None
    targets = [TARGETS[f.key].text for f in row.figures if f.key in TARGETS]
    measured = ", ".join(_figure(f, metrics) for f in figures)
    return f"| {row.what} | {', '.join(targets) or 'reported'} | {measured} | {commit_cell(record)} |"


def render(results: dict[str, dict[str, Any]]) -> str:
    """The table (header and rows) for these results."""
    lines = [
        "<!-- generated from benchmarks/results/*.json by `python -m benchmarks.readme_table --write`;"
        " edit that, not this -->",
        "| what | target | measured | commit |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        if row.source in results and (line := render_row(row, results[row.source])) is not None:
            lines.append(line)
    return "\n".join(lines)


def replace_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {START} … {END} section")
    return readme[: start + len(START)] + "\n" + table + "\n" + readme[end:]


def differences(readme: str, results: dict[str, dict[str, Any]]) -> list[str]:
    """A unified diff from the README's table to the rendered one; empty when they agree."""
    expected = replace_table(readme, render(results))
    return list(
        difflib.unified_diff(
            readme.splitlines(), expected.splitlines(), "README.md", "rendered from the JSON", lineterm=""
        )
    )


def main(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if README.md's table differs.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Rewrite the table in README.md.")] = False,
    readme: Annotated[Path, typer.Option(help="The README to check or rewrite.")] = README,
    results_dir: Annotated[Path, typer.Option(help="Where the JSON results are.")] = RESULTS_DIR,
) -> None:
    """Render the README's benchmark table from the JSON results."""
    results = load_results(results_dir)
    if check:
        diff = differences(readme.read_text(), results)
        if diff:
            print("\n".join(diff))
            print(
                "\nREADME's benchmark table differs: python -m benchmarks.readme_table --write",
                file=sys.stderr,
            )
            raise typer.Exit(1)
        print("README's benchmark table matches benchmarks/results/*.json")
    elif write:
        text = readme.read_text()
        updated = replace_table(text, render(results))
        if updated != text:
            readme.write_text(updated)
        print(f"{readme}: benchmark table {'rewritten' if updated != text else 'unchanged'}")
    else:
        print(render(results))


if __name__ == "__main__":
    typer.run(main)
