"""A cancel of a paused site's parked work holds for every stage, not only generate.

`blogstream sites cancel` reports a parked request CANCELLED whatever stage its
event was parked at. Kafka delivers at least once: a copy of its draft (or of
its illustrated record) can reach the image or publish stage after the cancel
(a replay after a rebalance or a restart). That copy must not pay Replicate or
post on the site: the request stays CANCELLED. A request the cancel did not
report (another site's, or one not parked) is never held back by it.

The real effect ledger (test database) and fakes for Replicate and Wix that
fail the test if they are called.
"""
from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from store.database import Database
from store.parked import ParkedEvent, ParkedEvents, cancel_waiting
from store.sites import Site
from streams.pipeline import image, publish, publish_batches, stage
from streams.pipeline.stage import StageCancelled

from .conftest import grant_all
from tests.store.conftest import reachable_database

pytestmark = pytest.mark.asyncio

RUN = f"cxl{uuid.uuid4().hex[:8]}"
ARTICLE = {"title": "Sandals", "excerpt": "Summer sandals.", "body": "Sandals for the summer, and how to choose them.",
           "slug": "sandals", "tags": [], "image_prompt": "a sandal on sand", "image_alt": "a sandal"}


@pytest_asyncio.fixture
async def db():
    async with reachable_database(max_size=4) as database:
        yield database
        for table, column in (("parked_events", "site_id"), ("stage_outputs", "request_id"),
                              ("blog_generations", "id"), ("sites", "site_id")):
            await database.pool.execute(f"DELETE FROM {table} WHERE {column} LIKE $1", f"{RUN}%")


@pytest.fixture(autouse=True)
def permits(monkeypatch):
    """Every permit granted at once: what is tested is whether the provider is called at all."""
    return grant_all(monkeypatch, stage, publish_batches)


class NoProvider:
    """Replicate and Wix: any call is a paid or visible effect the cancel should have stopped."""

    def __getattr__(self, name):
        raise AssertionError(f"{name} called for a cancelled request")


class Deps:
    def __init__(self, db: Database) -> None:
        self.db, self.images, self.wix, self.worker_id = db, NoProvider(), NoProvider(), "test-worker"

    async def site(self, site_id):
        return Site(site_id, wix_api_key="k")


async def paused_site(db: Database) -> str:
    site = f"{RUN}-{uuid.uuid4().hex[:6]}"
    await db.pool.execute("INSERT INTO sites (site_id, name, paused) VALUES ($1, $1, true)", site)
    return site


async def drafted_request(db: Database, site: str, stage: str, rank: int) -> str:
    """A request whose article is written (and ledgered); its row at `stage`."""
    request_id = f"{site}-{uuid.uuid4().hex[:6]}"
    await db.pool.execute(
        "INSERT INTO blog_generations (id, site_id, status, stage, stage_rank, request) "
        "VALUES ($1, $2, 'PENDING', $3, $4, '{}'::jsonb)", request_id, site, stage, rank)
    await db.claim_effect(request_id, "generate", site, owner="w:gen", lease_seconds=30)
    await db.complete_effect(request_id, "generate", site, {"article": ARTICLE, "usage": {}}, owner="w:gen")
    return request_id


def parked_at(site: str, request_id: str, stage: str, offset: int) -> ParkedEvent:
    return ParkedEvent(site, stage, request_id, f"{RUN}.topic.{stage}", 0, offset, site.encode(), b"record")


def draft_of(request_id: str, site: str) -> dict:
    return {"request": {"request_id": request_id, "site_id": site}, "article": ARTICLE,
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "attempts": 1, "drafted_at": 0}


async def status(db: Database, request_id: str) -> str:
    return await db.pool.fetchval("SELECT status FROM blog_generations WHERE id = $1", request_id)


async def test_a_copy_of_a_draft_cancelled_while_parked_at_image_makes_no_cover_and_posts_nothing(db):
    site = await paused_site(db)
    request_id = await drafted_request(db, site, "drafted", 1)
    await ParkedEvents(db).park([parked_at(site, request_id, "image", 1)])

    assert await cancel_waiting(db, site) == [request_id]
    assert await status(db, request_id) == "CANCELLED"
    await db.update_site_controls(site, paused=False)  # resumed; a replayed copy of its draft comes in

    deps = Deps(db)
    with pytest.raises(StageCancelled):
        await image.illustrate(draft_of(request_id, site), deps)
    # and should a copy of an illustrated record exist (made before the cancel), it posts nothing either
    illustrated = {**draft_of(request_id, site), "image": {"url": "https://replicate.example/c.png"}}
    with pytest.raises(StageCancelled):
        await publish.publish_post(illustrated, deps)


async def test_a_copy_cancelled_while_parked_at_publish_posts_nothing(db):
    site = await paused_site(db)
    request_id = await drafted_request(db, site, "illustrated", 2)
    await ParkedEvents(db).park([parked_at(site, request_id, "publish", 1)])

    assert await cancel_waiting(db, site) == [request_id]
    await db.update_site_controls(site, paused=False)

    illustrated = {**draft_of(request_id, site), "image": {"url": "https://replicate.example/c.png"}}
    with pytest.raises(StageCancelled):
        await publish.publish_post(illustrated, Deps(db))
    assert await status(db, request_id) == "CANCELLED"


async def test_a_request_already_published_is_not_reported_cancelled_and_stays_done(db):
    """A stale copy of a draft parked after its request was published: the cancel cannot undo the post,
    so it must not say it cancelled the request (nor touch its row)."""
    site = await paused_site(db)
    request_id = await drafted_request(db, site, "drafted", 1)
    await db.claim_effect(request_id, "publish", site, owner="w:pub", lease_seconds=30)
    await db.complete_effect(request_id, "publish", site, {"post_id": "p1", "post_url": "u"}, owner="w:pub")
    await db.pool.execute("UPDATE blog_generations SET status = 'DONE', stage = 'published', stage_rank = 3 "
                          "WHERE id = $1", request_id)
    await ParkedEvents(db).park([parked_at(site, request_id, "image", 1)])

    assert await cancel_waiting(db, site) == []
    assert await status(db, request_id) == "DONE"


async def test_a_request_whose_post_is_being_made_is_not_reported_cancelled_and_its_copy_waits_for_the_resume(db):
    """Its post was claimed (a publish under way when the site was paused) before the cancel: the post
    will happen, so the cancel must neither report it nor end its row, and its parked copy is released
    on resume as it came (finding the post in the ledger), not as a CANCELLED result."""
    site = await paused_site(db)
    request_id = await drafted_request(db, site, "illustrated", 2)
    assert (await db.claim_effect(request_id, "publish", site, owner="w:pub", lease_seconds=30)).state == "acquired"
    await ParkedEvents(db).park([parked_at(site, request_id, "image", 1)])

    assert await cancel_waiting(db, site) == []
    assert await status(db, request_id) == "PENDING"
    assert await db.pool.fetchval("SELECT cancel_reason FROM parked_events WHERE request_id = $1", request_id) is None
    await db.complete_effect(request_id, "publish", site, {"post_id": "p1", "post_url": "u"}, owner="w:pub")
    assert await db.get_effect(request_id, "publish") == {"post_id": "p1", "post_url": "u"}


async def test_the_sites_other_requests_are_not_held_back(db):
    """Only the requests the cancel reports get cancellations in the ledger."""
    site = await paused_site(db)
    parked_one = await drafted_request(db, site, "drafted", 1)
    running = await drafted_request(db, site, "drafted", 1)  # in flight, not parked
    await ParkedEvents(db).park([parked_at(site, parked_one, "image", 1)])

    assert await cancel_waiting(db, site) == [parked_one]
    for effect in ("image", "publish"):
        assert await db.get_effect(running, effect) is None
        assert (await db.claim_effect(running, effect, site, owner="w:x", lease_seconds=30)).state == "acquired"
    assert await status(db, running) == "PENDING"
