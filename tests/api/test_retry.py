"""POST /api/blogs/{id}/retry (`streams.api.blogs.retry_failed`) against the real test database, Kafka faked:
what each answer says when retries of one request race, or Kafka does not take one."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from store.database import Database
from store.outcomes import OutcomeRow
from store.sites import Site
from streams.api import blogs
from tests.store.conftest import reachable_database

RUN = f"retrytest{uuid.uuid4().hex[:8]}"
REQUEST = {"topic": "How to choose summer sandals", "keywords": [], "language": "en", "tone": "friendly",
           "target_words": 800, "audience": None, "requested_at": 1_750_000_000_000}


@pytest.fixture
async def db(monkeypatch):
    async with reachable_database(max_size=4) as database:
        async def ready():
            return None

        monkeypatch.setattr(blogs, "deps", SimpleNamespace(ready=ready, db=database))
        yield database
        await database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}-%")
        await database.pool.execute("DELETE FROM stage_outputs WHERE request_id LIKE $1", f"{RUN}-%")
        await database.pool.execute("DELETE FROM sites WHERE site_id LIKE $1", f"{RUN}-%")


async def failed_request(db: Database) -> str:
    request_id, site = f"{RUN}-{uuid.uuid4().hex[:8]}", f"{RUN}-site"
    at = datetime.now(timezone.utc)
    await db.upsert_outcomes([
        OutcomeRow(request_id, site, "PENDING", "requested", 0, at, request={"request_id": request_id, "site_id": site,
                                                                             **REQUEST}),
        OutcomeRow(request_id, site, "FAILED", "failed", 3, at, error="publish failed: Wix answered 401"),
    ])
    return request_id


async def test_two_retries_of_one_request_at_once_send_it_once_and_say_why_the_second_did_not(db, monkeypatch):
    # Two operators (or `retry --failed` and a retry by id) retry the same FAILED request at the same moment:
    # both read it FAILED, one reopens it. The other must not be told the request was never valid.
    request_id = await failed_request(db)
    produced: list[str] = []

    async def produce(requests, timeout):
        produced.extend(r["request_id"] for r in requests)

    monkeypatch.setattr(blogs, "produce", produce)
    read, both_read = 0, asyncio.Event()
    real_read = db.get_generation

    async def read_then_wait(rid):
        nonlocal read
        row = await real_read(rid)
        read += 1
        if read == 2:
            both_read.set()
        await both_read.wait()
        return row

    monkeypatch.setattr(db, "get_generation", read_then_wait)
    answers = await asyncio.gather(blogs.retry_failed(request_id), blogs.retry_failed(request_id))
    assert sorted(status for status, _ in answers) == [202, 409]
    assert produced == [request_id]  # sent again once
    (_, refused), = [answer for answer in answers if answer[0] == 409]
    assert refused["status"] == "PENDING" and "PENDING" in refused["error"], refused
    assert "never a valid request" not in refused["error"] and "submit it again" not in refused["error"]


async def test_a_request_with_nothing_stored_is_told_to_be_submitted_again(db):
    request_id, site = f"{RUN}-{uuid.uuid4().hex[:8]}", f"{RUN}-site"
    assert await db.record_rejected(request_id, site, "invalid generate input: topic: is required")
    status, body = await blogs.retry_failed(request_id)
    assert status == 409 and "never a valid request" in body["error"]


SEED_RETRY = ("UPDATE blog_generations SET status = 'PENDING', error = NULL "
              "WHERE status = 'FAILED' AND created_at > NOW() - INTERVAL '1 hour' AND id = $1")


async def test_a_request_the_seeds_retry_statement_reset_can_still_be_retried(db, monkeypatch):
    # An operator follows the seed's runbook ("retry failed blogs": the UPDATE above, which still runs). Nothing
    # sends such a row's request again, so it stayed PENDING for good, counted against the site's queue limits,
    # and `blogstream retry` refused it ("is PENDING") while `retry --failed` did not even list it.
    request_id = await failed_request(db)
    assert await db.pool.execute(SEED_RETRY, request_id) == "UPDATE 1"
    produced: list[str] = []

    async def produce(requests, timeout):
        produced.extend(r["request_id"] for r in requests)

    monkeypatch.setattr(blogs, "produce", produce)
    site = (await db.get_generation(request_id))["site_id"]
    assert request_id in await db.failed_request_ids(site)  # what `blogstream retry --failed` sends
    status, body = await blogs.retry_failed(request_id)
    assert status == 202, body
    assert produced == [request_id]
    row = await db.get_generation(request_id)
    assert (row["status"], row["stage"], row["stage_rank"]) == ("PENDING", "requested", 0)  # the run can end it
    status, body = await blogs.retry_failed(request_id)  # and now it is in flight: not twice
    assert status == 409 and body["status"] == "PENDING" and produced == [request_id]


async def test_a_cancelled_request_is_told_how_it_can_run_again(db):
    # A cancel writes the request's generate step as done-and-cancelled in the effect ledger, so the same id
    # sent again ends CANCELLED again: "only FAILED requests can be retried" left the operator no way forward.
    site = f"{RUN}-site"
    await db.upsert_site(Site(site, wix_api_key="k"))
    request_id = f"{RUN}-{uuid.uuid4().hex[:8]}"
    await db.upsert_outcomes([OutcomeRow(request_id, site, "PENDING", "requested", 0, datetime.now(timezone.utc),
                                         request={"request_id": request_id, "site_id": site, **REQUEST})])
    assert await db.cancel_queued(site, reason="cancelled by an operator before it started") == [request_id]
    status, body = await blogs.retry_failed(request_id)
    assert status == 409 and body["status"] == "CANCELLED"
    assert "new request_id" in body["error"] and "cancelled by an operator" in body["error"], body


async def test_each_retry_sends_the_next_run_even_after_one_kafka_did_not_take(db, monkeypatch):
    # Each retry is a run of its own (BlogRequest.retry): the sink then tells its results from an older run's
    # read again. A send Kafka answered too late may still have landed, so the run it used is not used again.
    request_id = await failed_request(db)
    sent: list[int] = []
    kafka_down = True

    async def produce(requests, timeout):
        if kafka_down:
            raise asyncio.TimeoutError()
        sent.extend(r["retry"] for r in requests)

    monkeypatch.setattr(blogs, "produce", produce)
    status, _ = await blogs.retry_failed(request_id)
    assert status == 503 and (await db.get_generation(request_id))["status"] == "FAILED"
    kafka_down = False
    status, _ = await blogs.retry_failed(request_id)
    assert status == 202 and sent == [2]
    site = (await db.get_generation(request_id))["site_id"]
    await db.upsert_outcomes([OutcomeRow(request_id, site, "FAILED", "failed", 3, datetime.now(timezone.utc),
                                         error="publish failed again", retry=2)])
    status, _ = await blogs.retry_failed(request_id)
    assert status == 202 and sent == [2, 3]
    assert (await db.get_generation(request_id))["retry"] == 3
