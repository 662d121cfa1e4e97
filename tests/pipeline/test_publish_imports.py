"""publish_post against the simulators: Wix imports a cover after answering, and a post never shows a failed one.

Wix's media import answers before it has downloaded the file (`operationStatus`
PENDING); the file turns READY, or FAILED when its source cannot be downloaded
(a Replicate output deleted after its hour, a URL that is no image). The
connectors are the real ones over HTTP against the simulators in this process;
the limiter and the effect ledger are the in-memory stand-ins of the other
pipeline tests.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from connectors.replicate_images import ImageMaker
from connectors.wix_blog import WixBlog
from store.sites import Site
from streams.pipeline import covers, publish, publish_batches, stage
from streams.pipeline.stage import StageFailed

from .conftest import grant_all
from .test_covers import LedgerDb

pytestmark = pytest.mark.asyncio

BASE = {"window_seconds": 60, "latency_scale": 1.0, "seed": 12,
        "replicate": {"latency": [0.05, 0.05], "create_rpm": 600, "other_rpm": 3000, "output_ttl_seconds": 3600.0},
        "wix": {"site_rpm": 200, "latency_import": [0.01, 0.01], "latency_create": [0.01, 0.01],
                "latency_other": [0.0, 0.0], "latency_file_ready": [0.3, 0.3]}}
ARTICLE = {"title": "Greenhouses at dawn", "excerpt": "Why they glow.", "body": "Text.", "slug": "greenhouses",
           "tags": ["glass"], "image_prompt": "A watercolor of a greenhouse at dawn, no text", "image_alt": "glass"}


@pytest.fixture
def sim(sim_server):
    sim_server.configure(BASE)
    sim_server.reset()
    return sim_server


@pytest.fixture
def permits(monkeypatch):
    granted = grant_all(monkeypatch, stage, publish_batches)
    quick = SimpleNamespace(max_attempts=3, retry_base_seconds=0.01, retry_patience_seconds=0.0,
                            wix_bulk_max_items=100, wix_timeout=10.0)
    for module in (stage, covers, publish_batches, publish):
        monkeypatch.setattr(module, "settings", quick, raising=False)
    monkeypatch.setattr(publish, "IMPORT_POLL_SECONDS", (0.05, 0.2), raising=False)
    return granted


class Deps(SimpleNamespace):
    async def site(self, site_id):
        return Site(site_id, wix_api_key="IST.test-key")


async def cover_made_earlier(sim, db: LedgerDb, request_id: str) -> dict:
    """The cover the image stage made for the request (a Replicate output), its prediction in the ledger."""
    async with ImageMaker(base_url=sim.replicate_base_url, api_token="r8_test", model="black-forest-labs/flux-schnell",
                          timeout=10.0, max_connections=4, first_poll_s=0.05, max_poll_s=0.1) as maker:
        return await covers.make_cover({"request_id": request_id, "site_id": "shop-1"}, ARTICLE,
                                       Deps(images=maker, db=db, worker_id="w"))


async def publish_with_simulators(sim, db: LedgerDb, illustrated: dict) -> dict:
    async with ImageMaker(base_url=sim.replicate_base_url, api_token="r8_test", model="black-forest-labs/flux-schnell",
                          timeout=10.0, max_connections=4, first_poll_s=0.05, max_poll_s=0.1) as maker, \
            WixBlog(base_url=sim.wix_base_url, timeout=10.0, max_connections=4) as wix:
        return await publish.publish_post(illustrated, Deps(images=maker, wix=wix, db=db, worker_id="w"))


async def test_a_cover_replicate_deleted_before_the_import_is_made_again_not_posted_broken(sim, permits):
    request = {"request_id": "req-gone-1", "site_id": "shop-1"}
    db = LedgerDb()
    image = await cover_made_earlier(sim, db, request["request_id"])
    # The hour has passed: Replicate deleted the output, and its URL answers 404 (as one it never had).
    image = {**image, "url": image["url"].rsplit("/", 1)[0] + "/deleted0an0hour0ago.png"}

    result = await publish_with_simulators(sim, db, {"request": request, "article": ARTICLE, "image": image})

    wix = sim.ledger()["wix"]
    assert result["status"] == "DONE" and wix["posts_total"] == 1
    assert wix["posts_with_failed_cover"] == 0, "the post shows a cover Wix could not download"
    assert sim.ledger()["replicate"]["predictions_created"] == 2  # a new cover made for it
    assert wix["imports_total"] == 2 and wix["imports_failed"] == 1


async def test_a_cover_wix_imports_slowly_is_waited_for_with_a_permit_per_look(sim, permits):
    request = {"request_id": "req-slow-1", "site_id": "shop-1"}
    db = LedgerDb()
    image = await cover_made_earlier(sim, db, request["request_id"])
    before = len(permits.needs)

    result = await publish_with_simulators(sim, db, {"request": request, "article": ARTICLE, "image": image})

    wix = sim.ledger()["wix"]
    assert result["status"] == "DONE" and wix["posts_total"] == 1 and wix["posts_with_failed_cover"] == 0
    assert wix["imports_total"] == 1 and sim.ledger()["replicate"]["predictions_created"] == 1
    assert len(permits.needs) - before == wix["admitted"]  # every Wix call, each look at the file too, had a permit
    assert wix["admitted"] >= 3  # the import, at least one look at the file, the create


async def test_an_import_wix_never_finishes_fails_the_request_saying_what_to_do(sim, permits):
    sim.configure({"wix": {"latency_file_ready": [60.0, 60.0]}})
    request = {"request_id": "req-stuck-1", "site_id": "shop-1"}
    db = LedgerDb()
    image = await cover_made_earlier(sim, db, request["request_id"])
    permits_settings = publish.settings
    permits_settings.wix_timeout = 0.5

    with pytest.raises(StageFailed) as failed:
        await publish_with_simulators(sim, db, {"request": request, "article": ARTICLE, "image": image})

    assert sim.ledger()["wix"]["posts_total"] == 0
    assert "req-stuck-1" in failed.value.message and "shop-1" in failed.value.message
    assert "blogstream retry req-stuck-1" in failed.value.action
