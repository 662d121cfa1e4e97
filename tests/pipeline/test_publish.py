"""publish_post: one Wix request per permit, and one post per request, even on retries."""
from __future__ import annotations

import time

import pytest

from connectors.errors import ProviderUnavailable
from store.effects import EffectClaim
from store.sites import Site
from connectors.wix_blog import PublishedPost
from streams.pipeline import publish, publish_batches, stage
from streams.limiter.client import Permit


class LedgerDb:
    """The effect ledger in memory: `done` holds effects that already happened."""

    def __init__(self, done: dict[tuple[str, str], dict]) -> None:
        self.done = dict(done)

    async def claim_effect(self, request_id, effect, site_id, *, owner, lease_seconds):
        if (request_id, effect) in self.done:
            return EffectClaim("done", self.done[(request_id, effect)])
        return EffectClaim("acquired")

    async def complete_effect(self, request_id, effect, site_id, payload, *, owner):
        self.done[(request_id, effect)] = payload

    async def release_effect(self, request_id, effect, *, owner):
        pass

    async def extend_effect(self, request_id, effect, *, owner, lease_seconds):
        pass


class FlakyWix:
    """The first create lands on the site but its answer is lost (a 503 to us)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.posts: dict[str, PublishedPost] = {}

    async def find_posts_by_slugs(self, site, slugs):
        self.calls.append("find")
        return {slug: self.posts[slug] for slug in slugs if slug in self.posts}

    async def publish_draft(self, site, draft):
        self.calls.append("create")
        slug = draft["seoSlug"]
        self.posts[slug] = PublishedPost("post-1", f"https://example.test/{slug}", slug)
        if len(self.posts) == 1 and self.calls.count("create") == 1:
            raise ProviderUnavailable("wix", "503 from Wix after the post was stored", status=503, retry_after=0.0)
        return self.posts[slug]


class CountingBudgets:
    def __init__(self) -> None:
        self.permits: list[dict[str, float]] = []

    async def acquire(self, *, site_id, request_id, needs, slot_limit=None, weight=1.0, lane="interactive"):
        self.permits.append(dict(needs))
        return Permit("g", time.time() + 60, dict(needs), 0.0)

    async def observe(self, needs, info, *, throttled):
        pass


class FakeDeps:
    def __init__(self, db: LedgerDb, wix: FlakyWix) -> None:
        self.db, self.wix, self.worker_id = db, wix, "test-worker"

    async def site(self, site_id):
        return Site(site_id, wix_api_key="k")


@pytest.mark.asyncio
async def test_a_retried_publish_takes_a_permit_for_every_wix_request_and_posts_once(monkeypatch):
    counting = CountingBudgets()
    monkeypatch.setattr(stage, "budgets", counting)
    monkeypatch.setattr(publish_batches, "budgets", counting)
    request = {"request_id": "req-1", "site_id": "site-a"}
    article = {"title": "T", "excerpt": "E", "body": "B", "slug": "t", "tags": [], "image_prompt": "", "image_alt": ""}
    # The media import happened in an earlier, interrupted attempt: a post may exist already.
    db = LedgerDb({("req-1", "publish-media"): {"id": "media-1", "url": "https://static.example/media-1.png"}})
    wix = FlakyWix()

    result = await publish.publish_post({"request": request, "article": article, "image": {"url": "u"}},
                                        FakeDeps(db, wix))

    assert result["status"] == "DONE" and result["post_id"] == "post-1"
    assert wix.calls == ["find", "create", "find"]  # the retry found the post the lost answer created
    assert len(wix.posts) == 1
    assert len(counting.permits) == len(wix.calls)
    assert all(needs == {"wix_requests:site-a": 1} for needs in counting.permits)
