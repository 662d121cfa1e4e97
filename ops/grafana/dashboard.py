"""The blogstream Grafana dashboard, generated: `python -m ops.grafana.dashboard` writes
ops/grafana/dashboards/blogstream.json (committed; tests/ops/test_dashboard.py checks it is current,
and tests/ops/test_prometheus_live.py runs every query against a live Prometheus).

Figures marked global are the same on every worker (read from Kafka, Postgres or the limiter
coordinator), so they are aggregated with max; per-worker counters are summed.
Grafana provisioning: ops/grafana/provisioning/ (datasource uid `blogstream-prometheus`).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "blogstream.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
EVENTS = "blogstream_stage_events_total"


@dataclass
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    thresholds: list[tuple[str, float | None]] = field(default_factory=list)  # (colour, from value)
    stack: bool = False


PANELS = [
    Panel(
        "Throughput",
        "Blogs published per minute (all workers), and events each stage finished per minute.",
        [
            (f'sum(rate({EVENTS}{{stage="publish", outcome="ok"}}[{RATE}])) * 60', "published / min"),
            (f'sum by (stage) (rate({EVENTS}{{outcome="ok"}}[{RATE}])) * 60', "{{stage}} done / min"),
        ],
    ),
    Panel(
        "Requests by status",
        "Rows of blog_generations by status (Postgres, global). PENDING is the seed's queue size: "
        "warning above 1,000, critical above 5,000. PENDING bulk: the backfills among them, which leave "
        "BLOGSTREAM_QUEUE_INTERACTIVE_SHARE of the queue to interactive requests.",
        [("max by (status) (blogstream_requests)", "{{status}}"),
         ("max(blogstream_requests_pending_bulk)", "PENDING bulk")],
        thresholds=[("green", None), ("orange", 1000), ("red", 5000)],
    ),
    Panel(
        "Failed share (last hour)",
        "FAILED among the requests finished (published or failed) in the last hour; the seed alerts above 5%.",
        [(
            f'sum(increase({EVENTS}{{outcome="failed"}}[1h])) / (sum(increase({EVENTS}{{stage="publish", '
            f'outcome="ok"}}[1h])) + sum(increase({EVENTS}{{outcome="failed"}}[1h])))',
            "failed share",
        )],
        unit="percentunit", kind="stat", width=6, thresholds=[("green", None), ("red", 0.05)],
    ),
    Panel(
        "Limiter coordinator",
        "1 on the worker that runs the limiter coordinator: exactly one should, at any time.",
        [("max by (instance) (blogstream_limiter_coordinator)", "{{instance}}")],
        kind="stat", width=6, thresholds=[("red", None), ("green", 1)],
    ),
    Panel(
        "Consumer lag per topic",
        "Events in each stage topic not yet committed by the worker group (global). blog.results is the "
        "sink's: Postgres falls behind when it grows.",
        [("max by (topic) (blogstream_consumer_lag)", "{{topic}}")],
    ),
    Panel(
        "Budget use vs limit",
        "Units used in the current window and the effective limit of each global budget (coordinator, global).",
        [
            ("max by (budget) (blogstream_budget_used)", "{{budget}} used"),
            ("max by (budget) (blogstream_budget_limit)", "{{budget}} limit"),
        ],
    ),
    Panel(
        "Budget use (share of limit)",
        "Used over limit per budget; the seed alerts above 90%. At 100% more budget helps, more workers do not.",
        [("max by (budget) (blogstream_budget_used) / max by (budget) (blogstream_budget_limit)", "{{budget}}")],
        unit="percentunit", thresholds=[("green", None), ("red", 0.9)],
    ),
    Panel(
        "Permit wait p99",
        "99th percentile of the time a stage waited for its permit (ask to usable grant), per budget.",
        [(
            f"histogram_quantile(0.99, sum by (le, budget) (rate(blogstream_permit_wait_seconds_bucket[{RATE}])))",
            "{{budget}}",
        )],
        unit="s",
    ),
    Panel(
        "Provider calls",
        "Successful provider calls per second, per provider (all workers).",
        [(f'sum by (provider) (rate(blogstream_provider_calls_total{{outcome="ok"}}[{RATE}]))', "{{provider}}")],
        unit="reqps",
    ),
    Panel(
        "Provider errors",
        "Failed provider calls per second, per provider and error (RateLimited, ProviderUnavailable, ...).",
        [(
            f'sum by (provider, outcome) (rate(blogstream_provider_calls_total{{outcome!="ok"}}[{RATE}]))',
            "{{provider}} {{outcome}}",
        )],
        unit="reqps",
    ),
    Panel(
        "429s",
        "Provider answers 429 per second: another client may share the key (the limiter shrinks the budget).",
        [(f'sum by (provider) (rate(blogstream_provider_calls_total{{outcome="RateLimited"}}[{RATE}]))',
          "{{provider}}")],
        unit="reqps",
    ),
    Panel(
        "Dead letters",
        "Records sent to blog.dlq per stage (not valid: garbage bytes, unknown schema, failed checks).",
        [(f'sum by (stage) (increase({EVENTS}{{outcome="dead_letter"}}[{RATE}]))', "{{stage}}")],
    ),
    Panel(
        "In flight per site (top 10)",
        "Requests of a site holding an in-flight slot (global); only sites with work have a series.",
        [("topk(10, max by (site) (blogstream_site_in_flight))", "{{site}}")],
        stack=True,
    ),
    Panel(
        "Spend per hour",
        "US dollars per hour of the provider calls recorded, per provider and model (all workers): the tokens "
        "and images the providers billed at the price table's prices. Per site: blogstream costs --by site.",
        [(f"sum by (provider, model) (rate(blogstream_cost_usd_total[{RATE}])) * 3600", "{{provider}} {{model}}")],
        unit="currencyUSD", stack=True,
    ),
    Panel(
        "Spend caps",
        "Sites a spend cap holds now, per cap (their requests wait: budget_exhausted), and the share of "
        "BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD all sites have spent today (global, from Postgres).",
        [
            ("max by (cap) (blogstream_sites_budget_exhausted)", "sites held: {{cap}} cap"),
            ("max(blogstream_global_spend_cap_used_ratio)", "global daily cap used"),
        ],
    ),
]


def _thresholds(steps: list[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": colour, "value": value} for colour, value in steps]}


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit}
    if panel.thresholds:
        defaults["thresholds"] = _thresholds(panel.thresholds)
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto", "textMode": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(panel.targets)
        ],
    }


def build() -> dict[str, Any]:
    panels, x, y = [], 0, 0
    for n, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(panel_json(panel, n, x, y))
        x += panel.width
    return {
        "uid": "blogstream",
        "title": "blogstream",
        "description": "Blog pipeline: throughput, outcomes, lag, budgets, providers (generated by ops/grafana/dashboard.py)",
        "tags": ["blogstream"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "annotations": {"list": []},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {"text": "Prometheus", "value": "blogstream-prometheus"}, "hide": 0, "refresh": 1,
        }]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
