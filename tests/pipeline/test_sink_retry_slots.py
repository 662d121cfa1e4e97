"""A retried request's in-flight slot is freed by the result that ends the retry, not by an old one.

`blogstream retry` sends a FAILED request through again; its generate step takes
one of the site's slots again. Kafka delivers at least once: the old FAILED
result can reach the sink again (its batch was stored but not yet committed when
a worker restarted). The sink released the slot of every final result it stored,
by request id, so that replay freed the retry's slot (the site ran one request
more than its cap) and set the row FAILED while the retry still ran. Now each run
carries its number (`retry`, counted up by the reopen) and holds a slot of its own
(`slot_key`); the old result frees only the old run's. Real database (the row and
its reopen), the sink, and the limiter's slot arithmetic (`SlotBudget`) as the
limiter client.
"""
from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio

from store.database import Database
from streams.app import requests_topic, results_topic
from streams.contract import encode
from streams.limiter.slots import SlotBudget
from streams.pipeline import factory, sink
from streams.pipeline.stage import slot_of
from tests.store.conftest import reachable_database

pytestmark = pytest.mark.asyncio

RUN = f"slot{uuid.uuid4().hex[:8]}"
SITE = f"{RUN}-shop"


@pytest_asyncio.fixture
async def db():
    async with reachable_database(max_size=4) as database:
        yield database
        await database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}%")


class Limiter:
    """The limiter client as the sink sees it, over the coordinator's slot arithmetic; keeps every release."""

    def __init__(self, cap: int = 1) -> None:
        self.slots = SlotBudget(f"slots:{SITE}", limit=cap)
        self.released: list[str] = []

    def take(self, slot: str) -> bool:  # what generate's permit does with its slot_limit
        if not self.slots.fits(time.time(), slot):
            return False
        self.slots.add(time.time(), slot)
        return True

    async def release_slot(self, site_id, slot):
        self.released.append(slot)
        self.slots.release(slot)


def sink_with(db: Database, limiter: Limiter, monkeypatch: Any) -> Limiter:
    """The sink writing to `db`, releasing slots in `limiter`."""
    async def ready():
        return None

    deps = SimpleNamespace(db=db, ready=ready)
    monkeypatch.setattr(sink, "deps", deps)
    monkeypatch.setattr(factory, "deps", deps)
    monkeypatch.setattr(sink, "budgets", limiter)
    return limiter


@pytest.fixture
def limiter(db, monkeypatch):
    return sink_with(db, Limiter(cap=1), monkeypatch)


def event(topic, value: bytes, offset: int):
    message = SimpleNamespace(topic=topic.get_topic_name(), partition=0, offset=offset, key=SITE.encode(), value=value)
    return SimpleNamespace(message=message, value=value, key=SITE.encode())


def request(request_id: str) -> dict:
    return {"request_id": request_id, "site_id": SITE, "topic": "Summer sandals", "requested_at": int(time.time() * 1000)}


def requested(value: dict, offset: int):
    return event(requests_topic, encode("BlogRequest", value), offset)


def failed(request_id: str, offset: int):
    return event(results_topic, encode("BlogResult", {
        "request_id": request_id, "site_id": SITE, "status": "FAILED", "stage": "image",
        "error": f"image failed for request {request_id}: gave up. retry it later: blogstream retry {request_id}",
        "attempts": 1, "finished_at": int(time.time() * 1000),
    }), offset)


async def test_an_old_failure_read_again_during_a_retry_keeps_the_retrys_slot(db, limiter):
    first, other = f"{RUN}-r1", f"{RUN}-r2"
    assert limiter.take(slot_of(request(first)))  # what generate takes: the first run's slot
    old_failure = failed(first, 10)
    await sink.store_batch([requested(request(first), 0), old_failure])  # the first try failed: its slot is free
    assert limiter.take(slot_of(request(other))) and limiter.slots.holders.keys() == {other}
    await sink.store_batch([requested(request(other), 1), failed(other, 11)])

    retried, _ = await db.reopen_failed(first)  # blogstream retry r1: the request it sends again
    assert retried["retry"] == 1
    await sink.store_batch([requested(retried, 2)])
    assert limiter.take(slot_of(retried))  # the retry's generate step holds the site's one slot

    await sink.store_batch([old_failure])  # the old FAILED result, read again (a restart before its commit)

    assert slot_of(retried) in limiter.slots.holders, "the old result freed the retry's slot"
    assert not limiter.take(slot_of(request(f"{RUN}-r3")))  # so the site stays within its cap of 1
    row = await db.pool.fetchrow("SELECT status, error FROM blog_generations WHERE id = $1", first)
    assert (row["status"], row["error"]) == ("PENDING", None)  # the retry's row does not say FAILED while it runs


async def test_the_retrys_own_result_frees_its_slot_and_ends_its_row(db, limiter):
    first = f"{RUN}-r4"
    assert limiter.take(slot_of(request(first)))
    await sink.store_batch([requested(request(first), 0), failed(first, 10)])
    retried, _ = await db.reopen_failed(first)
    await sink.store_batch([requested(retried, 1)])
    assert limiter.take(slot_of(retried))
    retry_failure = event(results_topic, encode("BlogResult", {
        "request_id": first, "site_id": SITE, "status": "FAILED", "stage": "publish", "error": "publish failed again",
        "finished_at": int(time.time() * 1000), "retry": retried["retry"],
    }), 11)
    await sink.store_batch([retry_failure])
    assert limiter.slots.holders == {}
    row = await db.pool.fetchrow("SELECT status, error, retry FROM blog_generations WHERE id = $1", first)
    assert (row["status"], row["error"], row["retry"]) == ("FAILED", "publish failed again", 1)
