"""What a worker reports about itself: the seed's heartbeat line and consumer lag.

Consumer lag (events written but not yet committed by the group) is computed
for the whole group from the broker, over every partition of each stage topic,
so every worker exports the same global figure as `blogstream_consumer_lag{topic=...}`.
The heartbeat also exports the requests in Postgres by status
(`blogstream_requests{status=...}`). ops/prometheus/alerts.yml has the alert rules.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from typing import Any, Callable, Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams import metrics
from streams.app import STAGE_TOPICS, app, topic_name
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS
from streams.log_limit import LogLimit
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


def publish_limiter_figures(stats: dict[str, Any]) -> None:
    """The budget and per-site gauges from the coordinator's stats, and when they were read."""
    for name in (OPENAI_REQUESTS, OPENAI_TOKENS, REPLICATE_REQUESTS):
        metrics.budget_used.labels(name).set(stats[name]["used_in_window"])
        metrics.budget_limit.labels(name).set(stats[name]["effective_limit"])
        metrics.budget_waiting.labels(name).set(stats[name]["waiting"])
    publish_site_figures(stats)
    metrics.figures_last_success.labels("limiter").set(time.time())


LOOP_LAG_EVERY = 0.1  # on average; each sleep is drawn from 0.5x-1.5x of it (see loop_lag_sample)


class GcPauses:
    """blogstream_gc_pause_seconds: each collection's length, by generation (a gc callback, installed once)."""

    def __init__(self) -> None:
        self._started = self._cpu_started = 0.0
        self._children = [metrics.gc_pause_seconds.labels(str(g)) for g in range(3)]
        self._cpu = [metrics.gc_cpu_seconds.labels(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started, self._cpu_started = time.perf_counter(), time.thread_time()
        else:
            generation = info["generation"]
            self._children[generation].observe(time.perf_counter() - self._started)
            # The collecting thread's CPU time: far below the length when the machine is too
            # busy to run the worker, close to it when the collector has much to walk.
            self._cpu[generation].inc(time.thread_time() - self._cpu_started)

    def install(self) -> None:
        if not any(isinstance(c, GcPauses) for c in gc.callbacks):
            gc.callbacks.append(self)


@app.task
async def sample_event_loop_lag() -> None:
    """blogstream_event_loop_lag_seconds: how late this worker's event loop wakes a sleeping task
    (and blogstream_gc_pause_seconds: how much of that the garbage collector takes)."""
    GcPauses().install()
    while True:
        await loop_lag_sample(metrics.event_loop_lag_seconds.observe)


async def loop_lag_sample(observe: Callable[[float], None], pause: Callable[[], float] | None = None) -> None:
    """One sample: sleep a random while, observe how late the wake was.

    The while is random so the samples fall at random moments. On a fixed
    0.1 s they locked in step with the young collections' 0.5 s clock (both
    timers are set again right after the same pause), and every fifth sample
    measured a collection: loops late over 5 ms in 150 of 1,780 samples
    against 26-51 with the clock out of step (docs/bench-growth.md, session 21).
    """
    loop = asyncio.get_running_loop()
    asked, sleep = loop.time(), (pause or _random_pause)()
    await asyncio.sleep(sleep)
    observe(max(0.0, loop.time() - asked - sleep))


def _random_pause() -> float:
    return LOOP_LAG_EVERY * random.uniform(0.5, 1.5)


_cycle = 0


@app.timer(interval=settings.heartbeat_seconds)
async def heartbeat() -> None:
    await beat()


async def beat() -> None:
    """The seed's heartbeat log line, per worker, with the global figures."""
    global _cycle
    _cycle += 1
    queue = await _publish_request_counts()
    try:
        stats = await budgets.stats(timeout=3.0)
    except Exception:
        stats = None
    if stats is not None:  # also while Postgres is down: each source's gauges are as fresh as it is
        publish_limiter_figures(stats)
    if stats is None or queue is None:
        log.info("[Blog Worker] Heartbeat - cycle %d | limiter or database not reachable yet", _cycle)
        return
    o, r = stats[OPENAI_REQUESTS], stats[REPLICATE_REQUESTS]
    t = stats[OPENAI_TOKENS]
    log.info(
        "[Blog Worker] Heartbeat - cycle %d | Queue: %d | OpenAI RPM: %s | Replicate RPM: %s",
        _cycle, queue, _pct(o["used_in_window"], o["limit"]), _pct(r["used_in_window"], r["limit"]),
        extra={  # keys of their own in JSON logs (BLOGSTREAM_LOG_FORMAT=json)
            "cycle": _cycle, "queue": queue,
            "openai_rpm_used": int(o["used_in_window"]), "openai_rpm_limit": int(o["limit"]),
            "openai_tpm_used": int(t["used_in_window"]), "openai_tpm_limit": int(t["limit"]),
            "replicate_rpm_used": int(r["used_in_window"]), "replicate_rpm_limit": int(r["limit"]),
        },
    )


async def _publish_request_counts() -> int | None:
    """`blogstream_requests{status}` and the bulk lane's gauges from Postgres; returns the PENDING count (the seed's queue size), None if down."""
    try:
        await deps.ready()
        assert deps.db is not None
        counts = await deps.db.status_counts()
        bulk = await deps.db.pending_bulk()
        held, oldest = await deps.db.batch_lane_figures()
    except Exception:
        return None
    for status, n in counts.items():
        metrics.requests_by_status.labels(status).set(n)
    metrics.requests_pending_bulk.set(bulk)
    for state, n in held.items():
        metrics.batch_lane_requests.labels(state).set(n)
    metrics.publish(metrics.batch_oldest_open, {(model,): at for model, at in oldest.items()})
    metrics.figures_last_success.labels("postgres").set(time.time())
    return counts.get("PENDING", 0)


_bootstrap = settings.kafka_bootstrap


def lag_by_topic(
    partitions: Iterable[TopicPartition],
    committed: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> dict[str, int]:
    """Per topic: the events the group has still to commit, summed over `partitions` (all of a topic's).

    A partition the group never committed counts from its log start, as does one whose
    commit fell behind the log start (retention deleted those events): that is where
    the group will read from. A negative offset means "none committed".
    """
    lag: dict[str, int] = {}
    for tp in partitions:
        start = max(committed.get(tp, -1), beginnings.get(tp, 0))
        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, ends.get(tp, 0) - start)
    return lag


async def group_lag() -> dict[str, int]:
    """Per stage topic (but the dead letters): consumer lag of the worker group over every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=_bootstrap, enable_auto_commit=False)
    try:  # started inside: a start that fails (the broker away) must not leave the other client open
        await admin.start()
        await consumer.start()
        names = [topic_name(t) for t in STAGE_TOPICS if t != "blog.dlq"]
        existing = await consumer.topics()  # also refreshes the metadata partitions_for_topic reads
        tps = [TopicPartition(name, p) for name in names if name in existing
               for p in sorted(consumer.partitions_for_topic(name) or ())]
        offsets = await admin.list_consumer_group_offsets(settings.app_id)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        beginnings = await consumer.beginning_offsets(tps) if tps else {}
        ends = await consumer.end_offsets(tps) if tps else {}
        return {name: 0 for name in names} | lag_by_topic(tps, committed, beginnings, ends)
    finally:
        await consumer.stop()
        await admin.close()


_lag_failures = LogLimit(log, "consumer lag not available", interval=300.0)


@app.timer(interval=settings.lag_seconds)
async def export_consumer_lag() -> None:
    await read_consumer_lag()


async def read_consumer_lag() -> None:
    """blogstream_consumer_lag from the broker; a failed read leaves the figures (and their time) as they were."""
    try:
        lags = await asyncio.wait_for(group_lag(), timeout=max(5.0, settings.lag_seconds))
    except Exception as exc:  # the broker may be moving; the next tick tries again
        _lag_failures.failed(exc, level=logging.INFO)
        return
    _lag_failures.ok()
    for topic, lag in lags.items():
        metrics.consumer_lag.labels(topic).set(lag)
    metrics.figures_last_success.labels("kafka").set(time.time())
