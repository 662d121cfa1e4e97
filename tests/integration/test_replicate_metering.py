"""Replicate on real workers: every call it meters had a permit, and each request pays for one prediction.

The simulator ends its synchronous wait after 1 s and takes 2 to 2.5 s per
image, so covers are polled; a third of the polls (and cancels) answer 503.
The workers' wire hook counts each permitted request as it leaves
(`blogstream_permit_send_delay_seconds_count{budget}`); the simulator counts
what arrives, per endpoint, and bills every prediction that ran.
"""
from __future__ import annotations

import re

import httpx

from stack.harness import summarize
from streams.limiter.specs import REPLICATE_OTHER_REQUESTS, REPLICATE_REQUESTS

SITES = ["pics-1", "pics-2"]


def permitted_sends(metrics_text: str, budget: str) -> int:
    match = re.search(rf'^blogstream_permit_send_delay_seconds_count{{budget="{budget}"}} ([0-9.e+]+)$',
                      metrics_text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


async def test_polls_are_permitted_and_a_failed_poll_never_buys_a_second_image(pipeline, sim, outcomes):
    # Latencies are scaled by the tests' 0.05: 40-50 s here is 2-2.5 s.
    sim.configure({"replicate": {"latency": [40, 50], "max_wait_seconds": 1, "other_error_rate": 0.34}})
    await outcomes.add_sites(SITES)
    requests = [pipeline.request(site, n) for n in range(4) for site in SITES]
    worker = pipeline.start_worker(retry_base_seconds=0.2)
    await pipeline.submit(requests)

    rows = await outcomes.wait_final([r["request_id"] for r in requests], timeout=150, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": len(requests)}

    replicate = sim.ledger()["replicate"]
    endpoints = replicate["endpoints"]
    assert endpoints["get"]["calls"] > len(requests), "the covers were polled"
    assert endpoints["get"]["errors_5xx"] >= 1, "the test needs failed polls"
    # One prediction per request, none bought twice, none left running.
    assert replicate["predictions_created"] == len(requests)
    assert replicate["billing"]["predictions"] == len(requests)
    assert replicate["predictions_in_progress"] == 0
    # Every call Replicate meters went out with a permit of its own budget.
    async with httpx.AsyncClient(timeout=30) as http:
        metrics_text = (await http.get(worker.url("/metrics"))).text
    other_calls = sum(endpoints[e]["calls"] for e in ("get", "cancel", "list"))
    assert permitted_sends(metrics_text, REPLICATE_REQUESTS) == endpoints["create"]["calls"]
    assert permitted_sends(metrics_text, REPLICATE_OTHER_REQUESTS) == other_calls
    assert replicate["max_requests_in_window_other"] <= 2250
    assert sim.ledger()["wix"]["posts_total"] == len(requests)
