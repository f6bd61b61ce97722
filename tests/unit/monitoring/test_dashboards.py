"""The Grafana dashboards as files: what Grafana's provisioning needs of them, and the legend
format the PNG renderer shares with Grafana. Their queries are evaluated against a real
Prometheus in tests/integration/test_compose_profile.py."""

from __future__ import annotations

import yaml

from core.settings import PROJECT_ROOT
from monitoring.dashboards import PanelQuery, legend, load_dashboards, panel_queries
from tests.integration.test_alert_rules import exposed_series, selectors

PROVISIONING = PROJECT_ROOT / "infra" / "grafana" / "provisioning"


def test_the_three_dashboards_are_provisioned_from_their_folder() -> None:
    boards = load_dashboards()
    assert {b["title"] for b in boards.values()} == {"Scoring SLO", "Streaming", "Model health"}
    assert len({b["uid"] for b in boards.values()}) == 3
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "fraud.yml").read_text())["providers"][0]
    grafana = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    assert f"./infra/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][
        0
    ]
    for board in boards.values():
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert panel.get("description") and panel.get("targets"), f"{board['title']}: {panel['title']}"


def test_panels_fit_the_grid_without_overlapping() -> None:
    for board in load_dashboards().values():
        taken: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, f"{board['title']}: {panel['title']} overlaps another panel"
            taken |= cells


def test_scoring_and_stream_panels_read_metrics_that_exist() -> None:
    labels, _ = exposed_series()
    for board in load_dashboards().values():
        for query in panel_queries(board):
            for name, _ in selectors(query.expr):
                if name.startswith(("fraud_score", "fraud_decisions", "fraud_stream", "fraud_fallbacks")):
                    assert name in labels, f"{board['title']} / {query.panel}: {name} is not exposed"


def test_legend_fills_labels_as_grafana_does() -> None:
    query = PanelQuery("d", "p", "A", "x", "{{decision}} · {{ served_by }}")
    assert legend(query, {"decision": "review", "served_by": "canary"}) == "review · canary"
    assert legend(PanelQuery("d", "p", "A", "up", ""), {"__name__": "up", "job": "scoring"}) == "job=scoring"
