"""HTTP pages every worker serves (Faust's embedded web server, port 6066 by default).

The limiter pages keep the seed's JSON fields and describe the GLOBAL budget: any
worker serves the snapshot the coordinator publishes every second (never an ask to
the coordinator), so every worker gives the same answer, with its age
(`snapshotAgeSeconds` / `snapshot_age_seconds`, `stale` past 5 s, 503 past 30 s).
"""
from __future__ import annotations

import logging
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams import metrics
from streams.api import access, openapi
from streams.api.http import ApiView, retry_after_header
from streams.app import app
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.limiter.published import StatsUnavailable
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
        "snapshotAgeSeconds": stats["snapshot_age_seconds"],
        "stale": stats["stale"],
    }
    if tokens:
        tok = stats[tokens]
        out.update(
            tokensInLastMinute=int(tok["used_in_window"]),
            maxTPM=int(tok["limit"]),
            tpmUsagePercent=round(100.0 * tok["used_in_window"] / max(tok["limit"], 1), 1),
        )
    return out


async def _stats_or_error(view: ApiView) -> tuple[dict[str, Any] | None, Response | None]:
    """The limiter's published snapshot (streams/limiter/client.py), or the 503 that says why not."""
    try:
        return await budgets.stats(timeout=3.0), None
    except StatsUnavailable as exc:
        return None, view.answer({"error": str(exc)}, 503, retry_after_header())


@app.page("/api/rate-limiter/stats")
class OpenAIStats(ApiView):
    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.answer(seed_stats(stats, OPENAI_REQUESTS, OPENAI_TOKENS))


@app.page("/api/replicate-rate-limiter/stats")
class ReplicateStats(ApiView):
    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.answer(seed_stats(stats, REPLICATE_REQUESTS, None))


@app.page("/api/limiter")
class LimiterState(ApiView):
    """Everything the coordinator knows: every budget, per-site Wix use and slots."""

    async def get(self, request: Request) -> Response:
        stats, error = await _stats_or_error(self)
        return error or self.answer(stats)


@app.page("/health")
class Health(ApiView):
    async def get(self, request: Request) -> Response:
        try:
            await deps.ready()
            assert deps.db is not None
            figures = await deps.db.health()
        except Exception:
            log.warning("health: the database could not be read", exc_info=True)
            return self.answer({"error": "the database could not be read; the worker cannot report its health"}, 503,
                               retry_after_header())
        return self.answer(figures.as_dict())


@app.page("/api/openapi.json")
class OpenAPI(ApiView):
    """This API described in OpenAPI 3.1 (the same document as docs/openapi.json)."""

    async def get(self, request: Request) -> Response:
        return self.answer(openapi.document())


access.install(app.web.web_app)
