"""The Grafana dashboard: the committed JSON is what ops/grafana/dashboard.py generates, and it fits the
provisioning files. Its queries run against a live Prometheus in test_prometheus_live.py."""
from __future__ import annotations

import json

import yaml

from ops.grafana import dashboard
from tests.ops.conftest import ROOT

GRAFANA = ROOT / "ops" / "grafana"


def test_the_committed_dashboard_is_the_generated_one():
    assert dashboard.OUT.read_text() == dashboard.render(), (
        "ops/grafana/dashboards/blogstream.json is stale: python -m ops.grafana.dashboard"
    )


def test_panels_have_unique_ids_queries_and_fit_the_grid():
    doc = json.loads(dashboard.OUT.read_text())
    panels = doc["panels"]
    assert len(panels) == len(dashboard.PANELS) >= 10
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))


def test_the_asked_for_panels_are_there():
    titles = {p["title"] for p in json.loads(dashboard.OUT.read_text())["panels"]}
    assert {
        "Throughput", "Requests by status", "Consumer lag per topic", "Budget use vs limit", "Permit wait p99",
        "Provider calls", "Provider errors", "429s", "Dead letters", "In flight per site (top 10)",
        "Limiter coordinator",
    } <= titles


def test_provisioning_points_at_the_dashboard_and_its_datasource():
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/blogstream.yml").read_text())["providers"]
    doc = json.loads(dashboard.OUT.read_text())
    variable = doc["templating"]["list"][0]
    assert [d["uid"] for d in datasources] == [variable["current"]["value"]]
    assert datasources[0]["type"] == variable["query"] == "prometheus"
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"]
