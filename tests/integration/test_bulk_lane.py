"""The bulk lane on real workers: bulk requests through the OpenAI Batch API, interactive ones first.

* Bulk requests with the batch lane on end DONE with exactly one post each, through one
  batch, and take no real-time OpenAI call; a worker SIGKILLed while its batch runs is
  replaced and the batch is neither sent again nor lost.
* Lines of batches that keep expiring are tried again, then go through the real-time
  lane: every request still ends DONE once.
* With the lane off, bulk requests share the real-time budget: interactive requests
  submitted behind a bulk backlog finish while most of the backlog still waits.
"""
from __future__ import annotations

import asyncio
import time

from stack.harness import summarize

BULK_SITES = ["backfill-a", "backfill-b"]
SHOP = "shop-live"
LANE = {"openai_batch_enabled": "true", "openai_batch_collect_seconds": 1.0, "openai_batch_poll_seconds": 0.5}


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


def assert_one_post_each(sim, rows) -> None:
    assert summarize(rows) == {"DONE": len(rows)}, summarize(rows)
    wix = sim.ledger()["wix"]
    assert not wix["duplicate_slugs"], wix["duplicate_slugs"]
    assert len({r["post_id"] for r in rows.values()}) == len(rows)


async def test_bulk_requests_go_through_one_batch_exactly_once_across_a_worker_kill(pipeline, sim, outcomes):
    # 40 lines at 0.1 s each: the batch runs for about 4 s, time to kill the worker in the middle.
    sim.configure({"openai": {"batch": {"validation_seconds": 0.0, "seconds_per_request": 2.0,
                                        "finalizing_seconds": 1.0}}})
    pipeline.settings.update(LANE)
    await outcomes.add_sites(BULK_SITES + [SHOP])
    first = pipeline.start_worker()
    bulk = [pipeline.request(BULK_SITES[n % 2], n, priority="bulk") for n in range(40)]
    live = [pipeline.request(SHOP, n) for n in range(5)]
    await pipeline.submit(bulk)
    await pipeline.submit(live)

    await wait_for(lambda: sim.ledger()["openai"]["batch"]["batches_created"] >= 1, 120, "the batch to be sent")
    first.kill()  # the batch is running at OpenAI; its worker is gone
    pipeline.start_worker()

    ids = [r["request_id"] for r in bulk + live]
    rows = await outcomes.wait_final(ids, timeout=240, workers=pipeline.workers)
    assert_one_post_each(sim, rows)
    openai = sim.ledger()["openai"]
    assert openai["batch"]["batches_created"] == 1  # never sent twice
    assert openai["batch"]["lines_completed"] == 40
    usage = openai["usage_by_model"]["gpt-4o-mini"]
    assert usage["batch"]["requests"] == 40 and usage["realtime"]["requests"] == 5  # bulk took no real-time call


async def test_lines_of_expiring_batches_are_tried_again_then_go_real_time(pipeline, sim, outcomes):
    # Every batch expires before a line has run: after two tries each line goes through the real-time lane.
    sim.configure({"openai": {"batch": {"validation_seconds": 0.0, "seconds_per_request": 100.0,
                                        "completion_window_seconds": 0.5}}})
    pipeline.settings.update(LANE | {"openai_batch_max_attempts": 2})
    await outcomes.add_sites(BULK_SITES)
    pipeline.start_worker()
    bulk = [pipeline.request(BULK_SITES[n % 2], n, priority="bulk") for n in range(6)]
    await pipeline.submit(bulk)
    rows = await outcomes.wait_final([r["request_id"] for r in bulk], timeout=240, workers=pipeline.workers)
    assert_one_post_each(sim, rows)
    openai = sim.ledger()["openai"]
    assert openai["batch"]["by_status"] == {"expired": 2}
    assert openai["usage_by_model"]["gpt-4o-mini"]["realtime"]["requests"] == 6


async def test_interactive_requests_are_served_before_a_bulk_backlog(pipeline, sim, outcomes):
    # The lane off: bulk and interactive share 60 OpenAI requests a minute (one a second, paced).
    pipeline.settings.update({"openai_rpm": 60})
    await outcomes.add_sites(BULK_SITES + [SHOP])
    pipeline.start_worker()
    await pipeline.wait_ready()
    bulk = [pipeline.request(BULK_SITES[n % 2], n, priority="bulk") for n in range(60)]
    await pipeline.submit(bulk)
    await asyncio.sleep(3)  # the backlog is waiting for permits
    live = [pipeline.request(SHOP, n) for n in range(5)]
    await pipeline.submit(live)
    rows = await outcomes.wait_final([r["request_id"] for r in live], timeout=60, workers=pipeline.workers)
    assert summarize(rows) == {"DONE": 5}
    bulk_done = summarize(await outcomes.rows([r["request_id"] for r in bulk])).get("DONE", 0)
    # Behind the backlog they would have waited for 60 permits (a minute); first in line, a few seconds.
    assert bulk_done <= 30, bulk_done
