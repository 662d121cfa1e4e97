"""Pause on real workers: a paused site's events are parked, and hold back nobody else's.

A paused site's requests come first in a partition, another site's behind them
in the same partition: the other site finishes and the partition's committed
offset moves past the paused site's events (parked in Postgres, acked). Requests
that arrive while no worker runs are not started by the next worker either (the
site controls are read before its first event), and on resume every parked
request finishes with exactly one post.
"""
from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from stack.harness import KAFKA, summarize

PARTITIONS = list(range(12))
HELD = "held-shop"


def same_partition_as(site: str) -> str:
    """Another site whose records share `site`'s partition (murmur2 of the key, as Kafka clients partition)."""
    p = DefaultPartitioner()
    want = p(site.encode(), PARTITIONS, PARTITIONS)
    return next(f"busy-shop-{n}" for n in range(1000) if p(f"busy-shop-{n}".encode(), PARTITIONS, PARTITIONS) == want)


async def committed(group: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return next((meta.offset for tp, meta in offsets.items() if tp.topic == topic and tp.partition == partition), -1)


async def parked_count(dsn: str, site: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM parked_events WHERE site_id = $1", site)
    finally:
        await conn.close()


async def test_a_paused_site_is_parked_holds_back_nobody_and_stays_paused_across_a_restart(pipeline, sim, outcomes):
    busy = same_partition_as(HELD)
    partition = DefaultPartitioner()(HELD.encode(), PARTITIONS, PARTITIONS)
    await outcomes.add_sites([HELD], paused=True)
    await outcomes.add_sites([busy])
    worker = pipeline.start_worker()

    held = [pipeline.request(HELD, n) for n in range(4)]
    others = [pipeline.request(busy, n) for n in range(4)]
    await pipeline.submit(held)  # first in the partition...
    await pipeline.submit(others)  # ...the other site's behind them
    rows = await outcomes.wait_final([r["request_id"] for r in others], timeout=120, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": 4}

    # The commit passes the paused site's events: they are parked in Postgres, not waiting in the worker.
    topic = f"{pipeline.prefix}blog.requests"
    deadline = time.time() + 30
    while await committed(pipeline.name, topic, partition) < len(held) + len(others):
        assert time.time() < deadline, "the committed offset did not move past the paused site's events"
        await asyncio.sleep(0.5)
    assert await parked_count(outcomes.dsn, HELD) == len(held)
    assert summarize(await outcomes.rows([r["request_id"] for r in held])) == {"PENDING": 4}

    # Requests that arrive while no worker runs: the next worker must not start them before it knows the pause.
    worker.stop()
    late = [pipeline.request(HELD, n) for n in range(4, 6)]
    more = [pipeline.request(busy, n) for n in range(4, 6)]
    await pipeline.submit(late)
    await pipeline.submit(more)
    worker = pipeline.start_worker()
    rows = await outcomes.wait_final([r["request_id"] for r in more], timeout=120, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": 2}
    deadline = time.time() + 30
    while await parked_count(outcomes.dsn, HELD) < len(held) + len(late):
        assert time.time() < deadline, "the late requests of the paused site were not parked"
        await asyncio.sleep(0.5)
    assert sim.ledger()["openai"]["per_site"].get(HELD, {}).get("calls", 0) == 0  # nothing of it started

    # Resume: every parked request goes back to its topic and finishes, with one post each.
    async with httpx.AsyncClient(base_url=worker.url(), timeout=30) as http:
        r = await http.post(f"/api/sites/{HELD}/resume")
        assert r.status_code == 200 and r.json()["paused"] is False
    every_held = [r["request_id"] for r in held + late]
    rows = await outcomes.wait_final(every_held, timeout=120, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": 6}
    assert await parked_count(outcomes.dsn, HELD) == 0
    ledger = sim.ledger()
    assert ledger["wix"]["posts_per_site"][HELD] == 6
    assert ledger["wix"]["posts_per_site"][busy] == 6
    assert ledger["openai"]["per_site"][HELD]["calls"] == 6  # one article each, none twice
