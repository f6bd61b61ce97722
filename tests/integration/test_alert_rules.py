"""The Prometheus alerting rules (infra/prometheus): promtool validates the config and the
rules and runs their unit tests (every alert once firing, once silent), and every metric a
rule reads from the scoring service or the stream processor exists in monitoring/metrics.py,
with the labels and histogram bucket boundaries the rule relies on, so a rename breaks here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from monitoring.metrics import PredictionLogCollector, ScoringMetrics, StreamMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"

# The monitor's metrics (drift, skew, canary guard, rollbacks on :9109): the monitor issue adds
# them, so until it lands they exist only here and in the rules. Name -> its labels.
MONITOR_METRICS: dict[str, set[str]] = {
    "fraud_drift_alarm": set(),
    "fraud_drift_psi": {"feature"},
    "fraud_skew_mismatch_share": {"feature"},
    "fraud_canary_check_failures_total": {"check"},
    "fraud_rollbacks_total": {"reason"},
    "fraud_monitor_actions_total": {"action"},
}
# Prometheus's own, per scrape target.
PROMETHEUS_METRICS: dict[str, set[str]] = {"up": set()}
# Added by Prometheus to every scraped series (prometheus.yml's job names and targets).
TARGET_LABELS = {"job", "instance"}

# PromQL, as much as these rules use: selectors `name{label="value", ...}`, function calls,
# grouping clauses, range durations.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def promtool(*args: str) -> str:
    """Run promtool from the repository root; fail (not skip) with its output if it fails."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: apt-get install prometheus (Debian's package has it;"
            " .ci/run installs it when missing)"
        )
    result = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric name, [(label, op, value), ...]) of every series selector in a PromQL expression."""
    text = _RANGE.sub("", _GROUPING.sub("", expr))
    found = []
    for match in _SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2)
        if name in _KEYWORDS:
            continue
        if braces is None and text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        found.append((name, _MATCHER.findall(braces or "")))
    return found


def grouping_labels(expr: str) -> set[str]:
    names = (label.strip() for labels in _GROUPING.findall(expr) for label in labels.split(","))
    return {name for name in names if name}


def exposed_series() -> tuple[dict[str, set[str]], dict[str, set[float]]]:
    """Sample names the scoring service and the stream processor expose, with their label
    names (counters as `_total`, histograms as `_bucket`/`_count`/`_sum`), and each
    histogram's bucket boundaries."""
    scoring, stream = ScoringMetrics(), StreamMetrics()
    # The prediction log's counts are registered by PredictionLog (which starts a writer
    # process); the collector alone, on zeros, exposes the same families.
    scoring.registry.register(PredictionLogCollector(lambda: defaultdict(float)))
    labels: dict[str, set[str]] = defaultdict(set)
    buckets: dict[str, set[float]] = defaultdict(set)
    for metrics in (scoring, stream):
        # A labelled metric exposes no sample before its first child: make one of each.
        for metric in vars(metrics).values():
            if isinstance(metric, MetricWrapperBase) and metric._labelnames:
                metric.labels(*["probe"] * len(metric._labelnames))
        for family in metrics.registry.collect():
            for sample in family.samples:
                labels[sample.name] |= set(sample.labels)
                if sample.name.endswith("_bucket"):
                    buckets[sample.name].add(float(sample.labels["le"]))
    return labels, buckets


@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", str(CONFIG.relative_to(ROOT))),
        ("check", "rules", str(RULES.relative_to(ROOT))),
        ("test", "rules", str(RULE_TESTS.relative_to(ROOT))),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    promtool(*args)


def test_rules_read_only_metrics_that_exist() -> None:
    labels, buckets = exposed_series()
    assert "fraud_score_request_duration_seconds_bucket" in labels  # the collection itself works
    known = {**labels, **MONITOR_METRICS, **PROMETHEUS_METRICS}
    problems = []
    for rule in alert_rules():
        alert, expr = rule["alert"], rule["expr"]
        found = selectors(expr)
        if not found:
            problems.append(f"{alert}: no metric found in {expr!r} (the parser missed it?)")
        for name, matchers in found:
            if name not in known:
                problems.append(f"{alert}: {name} is not exposed by ScoringMetrics/StreamMetrics")
                continue
            for label, op, value in matchers:
                if label not in known[name] | TARGET_LABELS:
                    problems.append(f"{alert}: {name} has no label {label!r} (has {sorted(known[name])})")
                if label == "le" and op == "=" and float(value) not in buckets.get(name, ()):
                    problems.append(f"{alert}: {name} has no bucket boundary le={value}")
        used = set().union(*(known.get(name, set()) for name, _ in found))
        for label in grouping_labels(expr) - used - TARGET_LABELS - {"le"}:
            problems.append(f"{alert}: groups by {label!r}, a label none of its metrics has")
    assert not problems, "\n".join(problems)


def test_every_alert_is_actionable_and_tested_both_ways() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    problems = []
    for rule in rules:
        alert = rule["alert"]
        if "for" not in rule:
            problems.append(f"{alert}: no `for:`")
        if rule.get("labels", {}).get("severity") not in {"page", "ticket"}:
            problems.append(f"{alert}: severity must be page or ticket")
        for key in ("summary", "runbook"):
            if not rule.get("annotations", {}).get(key, "").strip():
                problems.append(f"{alert}: no {key} annotation")
    # promtool passes a test of an alert that does not exist when it expects silence, so
    # the names are checked here, and that each alert has a firing and a silent case.
    firing: set[str] = set()
    silent: set[str] = set()
    for group in load(RULE_TESTS)["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    for alert in (firing | silent) - set(names):
        problems.append(f"alerts_test.yml tests {alert}, which alerts.yml does not define")
    for alert in names:
        if alert not in firing:
            problems.append(f"{alert}: no test where it fires")
        if alert not in silent:
            problems.append(f"{alert}: no test where it stays silent")
    assert not problems, "\n".join(problems)


def test_config_scrapes_the_three_processes_and_loads_the_rules() -> None:
    config = load(CONFIG)
    assert [(CONFIG.parent / path).resolve() for path in config["rule_files"]] == [RULES.resolve()]
    # Scaled services by Docker DNS (one target per replica), the monitor by its one address.
    targets = {
        job["job_name"]: [target for static in job.get("static_configs", []) for target in static["targets"]]
        + [f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
        for job in config["scrape_configs"]
    }
    assert targets == {"scoring": ["scoring:8000"], "stream": ["stream:9108"], "monitor": ["monitor:9109"]}
    # A rule's job="..." must name a scrape job, or it never matches.
    jobs = {
        value
        for rule in alert_rules()
        for _, matchers in selectors(rule["expr"])
        for label, op, value in matchers
        if label == "job" and op == "="
    }
    assert jobs <= set(targets), f"rules select jobs {sorted(jobs - set(targets))} that are not scraped"
