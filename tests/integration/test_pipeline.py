"""The whole pipeline on real Kafka, Postgres and the provider simulators."""
from __future__ import annotations

from collections import Counter

from stack.harness import summarize


async def test_requests_flow_to_done_with_one_post_each(pipeline, sim, outcomes):
    sites = [f"shop-{i}" for i in range(4)]
    await outcomes.add_sites(sites)
    requests = [pipeline.request(site, n) for n in range(5) for site in sites]
    pipeline.start_worker()
    await pipeline.submit(requests)

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=120, workers=pipeline.workers)

    assert summarize(rows) == {"DONE": len(requests)}
    for row in rows.values():
        assert row["post_url"].startswith("https://") and row["finished_at"] is not None
        assert row["drafted_at"] and row["illustrated_at"] and row["title"]
    ledger = sim.ledger()
    assert ledger["wix"]["duplicate_slugs"] == {} or ledger["wix"]["duplicate_slugs"] == []
    assert ledger["wix"]["posts_total"] == len(requests)
    assert Counter(ledger["wix"]["posts_per_site"]) == Counter({s: 5 for s in sites})


async def test_unknown_site_fails_with_an_actionable_error(pipeline, sim, outcomes):
    request = pipeline.request("not-registered", 1)
    pipeline.start_worker()
    await pipeline.submit([request])

    rows = await outcomes.wait_final([request["request_id"]], timeout=60, workers=pipeline.workers)

    row = rows[request["request_id"]]
    assert row["status"] == "FAILED"
    assert "not-registered" in row["error"] and "not registered" in row["error"]
    assert "sites add" in row["error"]


async def test_worker_reports_seed_stats_metrics_lag_and_heartbeat(pipeline, sim, outcomes):
    import asyncio

    import httpx

    await outcomes.add_sites(["shop-m"])
    pipeline.settings.update(heartbeat_seconds=1, lag_seconds=1)
    worker = pipeline.start_worker()
    requests = [pipeline.request("shop-m", n) for n in range(3)]
    await pipeline.submit(requests)
    await outcomes.wait_final([r["request_id"] for r in requests], timeout=90, workers=pipeline.workers)

    async with httpx.AsyncClient(base_url=worker.url(), timeout=30) as http:
        for _ in range(40):  # the coordinator publishes its figures every second, the first a moment after it starts
            stats = (await http.get("/api/rate-limiter/stats")).json()
            if stats.get("requestsInLastMinute") == 3:
                break
            await asyncio.sleep(0.25)
        assert {"queueLength", "requestsInLastMinute", "maxRPM", "rpmUsagePercent", "tpmUsagePercent"} <= set(stats)
        assert stats["maxRPM"] == 450 and stats["requestsInLastMinute"] == 3
        # Replicate permits may come in a lease (several at once, while the budget has room): the
        # units a worker did not take count until the lease ends (2 s) and go back then.
        for _ in range(40):
            replicate = (await http.get("/api/replicate-rate-limiter/stats")).json()
            if replicate["requestsInLastMinute"] == 3:
                break
            await asyncio.sleep(0.25)
        assert replicate["requestsInLastMinute"] == 3 and replicate["maxRPM"] == 450
        for _ in range(60):  # the lag timer ticks every second
            text = (await http.get("/metrics")).text
            if f'blogstream_consumer_lag{{topic="{pipeline.prefix}blog.requests"}} 0.0' in text:
                break
            await asyncio.sleep(0.5)
        assert f'blogstream_consumer_lag{{topic="{pipeline.prefix}blog.requests"}} 0.0' in text
        assert "blogstream_permit_wait_seconds_bucket" in text
    assert "[Blog Worker] Heartbeat - cycle" in worker.log_text()
    for _ in range(20):  # the heartbeat ticks every second
        if "OpenAI RPM: 3/450 (0.7%) | Replicate RPM: 3/450 (0.7%)" in worker.log_text():
            break
        await asyncio.sleep(0.5)
    assert "OpenAI RPM: 3/450 (0.7%) | Replicate RPM: 3/450 (0.7%)" in worker.log_text()
