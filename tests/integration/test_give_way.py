"""A site at its cap gives way on a real worker: its waiting events go to the end of their partition.

One site with a cap of one request in flight and a backlog comes first in a partition, another
site's requests behind it in the same partition, a third site on another partition; the read-ahead
is small. The capped site's waiting events are produced again at the end of the partition (Kafka,
the worker's own producer) while the read-ahead is full, and everything still ends DONE once: one
article and one post per request, none twice.
"""
from __future__ import annotations

import httpx
from aiokafka.partitioner import DefaultPartitioner

from stack.harness import summarize

PARTITIONS = list(range(12))
CAPPED = "capped-shop"


def site_on(partition_of: str, same: bool) -> str:
    """A site whose records share (or do not share) `partition_of`'s partition (murmur2, as Kafka clients)."""
    p = DefaultPartitioner()
    want = p(partition_of.encode(), PARTITIONS, PARTITIONS)
    return next(f"shop-{n}" for n in range(1000)
                if (p(f"shop-{n}".encode(), PARTITIONS, PARTITIONS) == want) == same)


async def moved(url: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{url}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("blogstream_stage_events_total{") and 'outcome="moved"' in line)


async def test_a_capped_sites_waiting_events_move_to_the_end_and_every_request_ends_once(pipeline, sim, outcomes):
    busy, other = site_on(CAPPED, same=True), site_on(CAPPED, same=False)
    await outcomes.add_sites([CAPPED], max_in_flight=1)
    await outcomes.add_sites([busy, other])
    pipeline.settings.update({"read_ahead": 12})
    worker = pipeline.start_worker()

    capped = [pipeline.request(CAPPED, n) for n in range(8)]
    behind = [pipeline.request(busy, n) for n in range(24)]
    elsewhere = [pipeline.request(other, n) for n in range(4)]
    await pipeline.submit(capped)  # first in the partition...
    await pipeline.submit(behind)  # ...another site's behind them...
    await pipeline.submit(elsewhere)  # ...and a site on another partition
    every = [r["request_id"] for r in capped + behind + elsewhere]
    rows = await outcomes.wait_final(every, timeout=240, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": len(every)}

    assert await moved(worker.url()) > 0, "the capped site's waiting events were moved"
    ledger = sim.ledger()
    for site, requests in ((CAPPED, capped), (busy, behind), (other, elsewhere)):
        assert ledger["wix"]["posts_per_site"][site] == len(requests), site  # one post each, none twice
        assert ledger["openai"]["per_site"][site]["calls"] == len(requests), site  # one article each
