"""HTTP pages every worker serves (Faust's embedded web server, port 6066 by default).

The limiter pages keep the seed's JSON fields and describe the GLOBAL budget:
any worker asks the coordinator, so every worker gives the same answer.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.app import app
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS

log = logging.getLogger(__name__)


@app.page("/metrics")
class Metrics(View):
    """Our metrics (streams/metrics.py), and only ours.

    Faust's Prometheus sensors (`setup_prometheus_sensors`) are left out: their names break
    the conventions (`*_events_runtime_ms`, latencies in milliseconds, gauges called
    `*_total_*`, `offset_commited`), their offsets cover only the partitions one worker holds
    and only those with a commit (the lag we export counts every partition), and what we
    need from them (events by stage and outcome, consumer lag) we export ourselves. They
    also ran on every message a worker handles.
    """

    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def seed_stats(stats: dict[str, Any], requests: str, tokens: str | None) -> dict[str, Any]:
    """The seed's `/api/rate-limiter/stats` shape, from the coordinator's figures."""
    req = stats[requests]
    out = {
        "queueLength": int(req["waiting"]),
        "requestsInLastMinute": int(req["used_in_window"]),
        "maxRPM": int(req["limit"]),
        "effectiveRPM": int(req["effective_limit"]),
        "rpmUsagePercent": round(100.0 * req["used_in_window"] / max(req["limit"], 1), 1),
        "windowSeconds": stats["window_seconds"],
    }
    if tokens:
        tok = stats[tokens]
        out.update(
            tokensInLastMinute=int(tok["used_in_window"]),
            maxTPM=int(tok["limit"]),
            tpmUsagePercent=round(100.0 * tok["used_in_window"] / max(tok["limit"], 1), 1),
        )
    return out


async def _stats_or_error(view: View) -> tuple[dict[str, Any] | None, Response | None]:
    try:
        return await budgets.stats(), None
    except asyncio.TimeoutError:
        return None, view.json(
            {"error": "the limiter coordinator did not answer within 5 s (a rebalance may be under way); try again"},
            status=503,
        )


@app.page("/api/rate-limiter/stats")
class OpenAIStats(View):
    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.json(seed_stats(stats, OPENAI_REQUESTS, OPENAI_TOKENS))


@app.page("/api/replicate-rate-limiter/stats")
class ReplicateStats(View):
    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.json(seed_stats(stats, REPLICATE_REQUESTS, None))


@app.page("/api/limiter")
class LimiterState(View):
    """Everything the coordinator knows: every budget, per-site Wix use and slots."""

    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.json(stats)


@app.page("/health")
class Health(View):
    async def get(self, request: Request) -> Response:
        await deps.ready()
        assert deps.db is not None
        figures = await deps.db.health()
        return self.json(figures.as_dict())
