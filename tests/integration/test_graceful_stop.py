"""A worker stopped cleanly (SIGTERM, as a deploy or `docker compose stop` does) pays for nothing twice.

Stopping used to cancel every stage task a second after Faust stopped: the
articles under way at OpenAI were abandoned after OpenAI had taken (and
billed) them, their claims released, and the worker that ran their requests
next paid for each again. Now a stop starts no new call and waits (at most
BLOGSTREAM_STOP_DRAIN_SECONDS) for those in flight to answer and be recorded.

Articles take 6 s here, so the SIGTERM surely lands while some are at OpenAI
(the test checks it did); the stop waits for answers, never for a fixed time.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg

from stack.harness import Worker

# Slow articles; covers and posts at their usual speed.
SLOW_ARTICLES = {"latency_scale": 1.0, "openai": {"latency": [6.0, 6.0]}, "replicate": {"latency": [0.1, 0.2]}}


async def ledger_rows(outcomes, ids: list[str]) -> Counter:
    conn = await asyncpg.connect(outcomes.dsn)
    try:
        rows = await conn.fetch("SELECT stage, status FROM stage_outputs WHERE request_id = ANY($1::text[])", ids)
    finally:
        await conn.close()
    return Counter((r["stage"], r["status"]) for r in rows)


async def stop_with_articles_at_openai(sim, worker: Worker, at_least: int, timeout: float = 120) -> int:
    """SIGTERM once `at_least` articles are at OpenAI; waits for the worker to exit; returns the articles taken."""
    deadline = time.time() + timeout
    while sim.ledger()["openai"]["admitted"] < at_least:
        assert worker.alive, worker.log_text()[-3000:]
        assert time.time() < deadline, "no article reached OpenAI"
        await asyncio.sleep(0.1)
    worker.stop(timeout=90)  # SIGTERM; SIGKILL only after 90 s (the drain waits 45 s at most)
    assert worker.proc.returncode == 0, f"the worker did not stop by itself:\n{worker.log_text()[-3000:]}"
    return sim.ledger()["openai"]["admitted"]


async def test_a_worker_stopped_with_articles_at_openai_records_them_and_none_is_paid_twice(pipeline, sim, outcomes):
    sim.configure(SLOW_ARTICLES)
    sites = [f"{pipeline.name}-s{i}" for i in range(4)]
    await outcomes.add_sites(sites)
    requests = [pipeline.request(site, n) for site in sites for n in range(2)]
    ids = [r["request_id"] for r in requests]

    first = pipeline.start_worker()
    await pipeline.wait_ready()
    await pipeline.submit(requests)
    taken = await stop_with_articles_at_openai(sim, first, at_least=2)

    # Every article OpenAI took before the stop is in the ledger, and no claim is left for the lease to end.
    ledger = await ledger_rows(outcomes, ids)
    assert ledger[("generate", "done")] == taken, (taken, ledger)
    assert not [key for key in ledger if key[1] == "claimed"], ledger
    assert "every provider call in flight is recorded" in first.log_text()

    second = pipeline.start_worker()
    rows = await outcomes.wait_final(ids, timeout=180, workers=[second])
    assert Counter(r["status"] for r in rows.values()) == {"DONE": len(ids)}
    billed = sim.ledger()
    assert billed["openai"]["admitted"] == len(ids), "articles paid for twice"
    assert billed["replicate"]["predictions_created"] == len(ids)
    assert billed["wix"]["posts_total"] == len(ids)
