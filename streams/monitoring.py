"""What a worker reports about itself: the seed's heartbeat line and consumer lag.

Consumer lag (events written but not yet committed by the group) is computed
for the whole group from the broker, so every worker exports the same global
figure as `blogstream_consumer_lag{topic=...}`; docs/operations.md has the
alert rules.
"""
from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka import AIOKafkaConsumer

from streams import metrics
from streams.app import STAGE_TOPICS, app, topic_name
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS
from streams.settings import settings

log = logging.getLogger(__name__)


def _pct(used: float, limit: float) -> str:
    return f"{int(used)}/{int(limit)} ({100.0 * used / max(limit, 1):.1f}%)"


def publish_site_figures(stats: dict[str, Any]) -> None:
    """Per-site gauges from the coordinator's stats: in-flight slots and each site's share of each global budget.

    Only sites with slots or units in the window have series; the others are
    removed, so the series follow the sites active now (at most a budget's
    limit per window) rather than every site ever seen.
    """
    metrics.publish(metrics.site_in_flight, {(site,): n for site, n in (stats.get("slots") or {}).items()})
    used: dict[tuple[str, ...], float] = {}
    share: dict[tuple[str, ...], float] = {}
    for budget, by_site in metrics.site_budget_shares(stats).items():
        for site, (units, part) in by_site.items():
            used[(budget, site)] = units
            share[(budget, site)] = part
    metrics.publish(metrics.site_budget_used, used)
    metrics.publish(metrics.site_budget_share, share)


_cycle = 0


@app.timer(interval=settings.heartbeat_seconds)
async def heartbeat() -> None:
    """The seed's heartbeat log line, per worker, with the global figures."""
    global _cycle
    _cycle += 1
    try:
        stats = await budgets.stats(timeout=3.0)
        await deps.ready()
        assert deps.db is not None
        queue = (await deps.db.health()).queue_size
    except Exception:
        log.info("[Blog Worker] Heartbeat - cycle %d | limiter or database not reachable yet", _cycle)
        return
    for name in (OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS):
        metrics.budget_used.labels(name).set(stats[name]["used_in_window"])
        metrics.budget_limit.labels(name).set(stats[name]["effective_limit"])
        metrics.budget_waiting.labels(name).set(stats[name]["waiting"])
    publish_site_figures(stats)
    o, r = stats[OPENAI_REQUESTS], stats[REPLICATE_REQUESTS]
    log.info(
        "[Blog Worker] Heartbeat - cycle %d | Queue: %d | OpenAI RPM: %s | Replicate RPM: %s",
        _cycle, queue, _pct(o["used_in_window"], o["limit"]), _pct(r["used_in_window"], r["limit"]),
    )



_bootstrap = settings.kafka_bootstrap


async def group_lag() -> dict[str, int]:
    """Per stage topic: end offsets minus the group's committed offsets, summed over partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=_bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.app_id)
        names = [topic_name(t) for t in STAGE_TOPICS if t != "blog.dlq"]
        tps = [tp for tp in committed if tp.topic in names]
        ends = await consumer.end_offsets(tps) if tps else {}
        lag = {name: 0 for name in names}
        for tp in tps:
            lag[tp.topic] += max(0, ends.get(tp, 0) - max(committed[tp].offset, 0))
        return lag
    finally:
        await consumer.stop()
        await admin.close()


@app.timer(interval=settings.lag_seconds)
async def export_consumer_lag() -> None:
    try:
        for topic, lag in (await group_lag()).items():
            metrics.consumer_lag.labels(topic).set(lag)
    except Exception:  # the broker may be moving; the next tick tries again
        log.debug("consumer lag not available", exc_info=True)
