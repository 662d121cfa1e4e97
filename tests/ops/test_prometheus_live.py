"""A private Prometheus scraping a real worker (the local stack: `make stack-up`), asked through its HTTP API.

One worker runs a few requests to DONE (plus one FAILED and one dead letter); Prometheus scrapes it
every second with the alert rules loaded. Then: the series the alerts and the dashboard need exist
with sane values, every rule evaluates without error, and every query of every dashboard panel
parses and returns data over the run. Everything polls with a deadline.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import pytest
import yaml

from ops.grafana import dashboard
from stack.harness import free_port

# Every rule of ops/prometheus/alerts.yml (and its recording rules), as Prometheus should load them.
RULES = [rule for group in yaml.safe_load((Path(__file__).resolve().parents[2] / "ops/prometheus/alerts.yml").read_text())["groups"]
         for rule in group["rules"]]
from stack.observe import Prometheus
from tests.integration.conftest import outcomes, pipeline, sim  # noqa: F401 (fixtures)
from tests.ops.conftest import find_tool, run_promtool

pytestmark = pytest.mark.integration

RATE_INTERVAL = "5s"  # stands for Grafana's $__rate_interval at a 1 s scrape interval
SITES = ("shop-p1", "shop-p2")
PROVIDERS = {"openai", "replicate", "wix"}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 60.0) -> Any:
    """Poll `check` until it returns without AssertionError; after `timeout`, raise its last failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: still failing after {timeout:.0f} s: {exc}") from exc
        await asyncio.sleep(0.5)


def values(result: list[dict[str, Any]], label: str | None = None) -> dict[str, float]:
    """Instant-query result -> {label value (or ''): value}."""
    return {(s["metric"].get(label, "") if label else ""): float(s["value"][1]) for s in result}


@pytest.fixture
def prometheus_dir(tmp_path):
    return tmp_path / "prometheus"


async def test_prometheus_sees_lag_budgets_permits_outcomes_and_every_panel_has_data(
    pipeline, sim, outcomes, prometheus_dir  # noqa: F811
):
    find_tool("prometheus")
    promtool = find_tool("promtool")
    sim.configure({"latency_scale": 1.0})  # requests stay in flight for seconds: the per-site panels see them
    await outcomes.add_sites(SITES)
    pipeline.settings.update(heartbeat_seconds=1, lag_seconds=1)
    worker = pipeline.start_worker()
    prom = await asyncio.to_thread(
        Prometheus.start, directory=prometheus_dir, port=free_port(), targets=[f"127.0.0.1:{worker.web_port}"],
        scrape_interval="1s",
    )
    try:
        started = time.time()
        await pipeline.wait_ready()
        requests = [pipeline.request(site, n) for n in range(5) for site in SITES]
        unknown = pipeline.request("not-registered", 1)  # FAILED: an unknown site
        await pipeline.submit([*requests, unknown], raw=[(SITES[0].encode(), b"not a record")])  # a dead letter
        rows = await outcomes.wait_final([r["request_id"] for r in [*requests, unknown]], timeout=120,
                                         workers=pipeline.workers)
        assert sorted(r["status"] for r in rows.values()) == ["DONE"] * len(requests) + ["FAILED"]

        async def query(expr: str) -> list[dict[str, Any]]:
            return await asyncio.to_thread(prom.query, expr)

        async def scraped() -> None:
            assert values(await query('up{job="blogstream"}')) == {"": 1.0}
            statuses = values(await query("blogstream_requests"), "status")
            assert statuses.get("DONE") == len(requests) and statuses.get("FAILED") == 1, statuses
            assert statuses.get("PENDING") == 0, statuses

        await eventually(scraped, "the worker's figures in Prometheus")

        async def lag() -> None:
            lags = values(await query("blogstream_consumer_lag"), "topic")
            stages = {f"{pipeline.prefix}blog.{t}" for t in ("requests", "drafts", "illustrated", "results")}
            assert set(lags) == stages, lags
            assert all(v >= 0 for v in lags.values()), lags
            assert lags[f"{pipeline.prefix}blog.requests"] == 0, lags  # all done and committed

        await eventually(lag, "consumer lag")

        used = values(await query("blogstream_budget_used"), "budget")
        limit = values(await query("blogstream_budget_limit"), "budget")
        assert set(used) == set(limit) == {"openai_requests", "openai_tokens", "replicate_requests"}
        assert all(0 <= used[b] <= limit[b] for b in used), (used, limit)
        assert used["openai_requests"] >= len(requests), used  # all in the last minute

        permits = values(await query("sum by (budget) (blogstream_permit_wait_seconds_count)"), "budget")
        assert permits.get("openai_requests", 0) >= len(requests) and permits.get("replicate_requests", 0) > 0
        assert values(await query("sum(blogstream_limiter_grants_total)"))[""] > 0
        assert values(await query("blogstream_limiter_coordinator")) == {"": 1.0}

        events = await query("blogstream_stage_events_total")
        by = {(s["metric"]["stage"], s["metric"]["outcome"]): float(s["value"][1]) for s in events}
        assert by[("publish", "ok")] == len(requests), by
        assert by[("generate", "failed")] >= 1 and by[("generate", "dead_letter")] == 1, by

        calls = values(await query('sum by (provider) (blogstream_provider_calls_total{outcome="ok"})'), "provider")
        assert set(calls) == PROVIDERS, calls  # providers, never stage names
        assert calls["openai"] >= len(requests) and calls["replicate"] >= len(requests) and calls["wix"] >= len(requests)
        labels = values(await query("count by (provider) (blogstream_provider_calls_total)"), "provider")
        assert set(labels) == PROVIDERS, labels

        # The alert rules were loaded and evaluate without error against real series.
        async def rules_ok() -> None:
            groups = (await asyncio.to_thread(prom.api, "rules"))["groups"]
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == len(RULES) and all(r["health"] == "ok" for r in rules), [
                (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]

        await eventually(rules_ok, "alert rules")

        # Every panel's every query parses and, over the run, returns data (Grafana asks for ranges).
        panels = json.loads(dashboard.OUT.read_text())["panels"]

        async def every_panel() -> None:
            empty = []
            for panel in panels:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                    result = await asyncio.to_thread(prom.query_range, expr, started, time.time(), "1s")
                    if not any(not math.isnan(float(v)) for s in result for _, v in s["values"]):
                        empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
            assert not empty, "no data for:\n" + "\n".join(empty)

        await eventually(every_panel, "dashboard panels", timeout=30)
        print(f"{len(panels)} panels, {sum(len(p['targets']) for p in panels)} queries evaluated with data")

        # What the worker serves passes the naming lint, as scraped.
        async with httpx.AsyncClient(timeout=30) as http:
            exposition = (await http.get(worker.url("/metrics"))).text
        assert run_promtool(promtool, "check", "metrics", stdin=exposition).strip() == ""
    finally:
        await asyncio.to_thread(prom.stop)
