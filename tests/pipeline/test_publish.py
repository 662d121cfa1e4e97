"""publish_post: one Wix request per permit, and one post per request, even on retries."""
from __future__ import annotations


import pytest

from connectors.errors import ProviderUnavailable
from store.effects import EffectClaim
from store.sites import Site
from connectors.wix_blog import PublishedPost
from streams.pipeline import publish, publish_batches, stage
from streams.pipeline.stage import StageFailed

from .conftest import grant_all


class LedgerDb:
    """The effect ledger in memory: `done` holds effects that already happened."""

    def __init__(self, done: dict[tuple[str, str], dict]) -> None:
        self.done = dict(done)
        self.freed: list[tuple[str, str, str]] = []  # claims given up: ("released" | "lapsed", request, effect)

    async def claim_effect(self, request_id, effect, site_id, *, owner, lease_seconds):
        if (request_id, effect) in self.done:
            return EffectClaim("done", self.done[(request_id, effect)])
        return EffectClaim("acquired")

    async def complete_effect(self, request_id, effect, site_id, payload, *, owner):
        self.done[(request_id, effect)] = payload

    async def release_effect(self, request_id, effect, *, owner):
        self.freed.append(("released", request_id, effect))

    async def lapse_effect(self, request_id, effect, *, owner):
        self.freed.append(("lapsed", request_id, effect))

    async def extend_effect(self, request_id, effect, *, owner, lease_seconds):
        pass

    async def get_effect(self, request_id, effect):
        return self.done.get((request_id, effect))


class FlakyWix:
    """The first create lands on the site but its answer is lost (a 503 to us)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.posts: dict[str, PublishedPost] = {}

    async def find_posts_by_slugs(self, site, slugs):
        self.calls.append("find")
        return {slug: self.posts[slug] for slug in slugs if slug in self.posts}

    async def find_post_by_slug(self, site, slug):
        self.calls.append("get")
        return self.posts.get(slug)

    async def publish_draft(self, site, draft):
        self.calls.append("create")
        slug = draft["seoSlug"]
        self.posts[slug] = PublishedPost("post-1", f"https://example.test/{slug}", slug)
        if len(self.posts) == 1 and self.calls.count("create") == 1:
            raise ProviderUnavailable("wix", "503 from Wix after the post was stored", status=503, retry_after=0.0)
        return self.posts[slug]


@pytest.fixture
def counting(monkeypatch):
    return grant_all(monkeypatch, stage, publish_batches)


class FakeDeps:
    def __init__(self, db: LedgerDb, wix: FlakyWix) -> None:
        self.db, self.wix, self.worker_id = db, wix, "test-worker"

    async def site(self, site_id):
        return Site(site_id, wix_api_key="k")


@pytest.mark.asyncio
async def test_a_retried_publish_takes_a_permit_for_every_wix_request_and_posts_once(counting):
    request = {"request_id": "req-1", "site_id": "site-a"}
    article = {"title": "T", "excerpt": "E", "body": "B", "slug": "t", "tags": [], "image_prompt": "", "image_alt": ""}
    # The media import happened in an earlier, interrupted attempt: a post may exist already.
    db = LedgerDb({("req-1", "publish-media"): {"id": "media-1", "url": "https://static.example/media-1.png"}})
    wix = FlakyWix()

    result = await publish.publish_post({"request": request, "article": article, "image": {"url": "u"}},
                                        FakeDeps(db, wix))

    assert result["status"] == "DONE" and result["post_id"] == "post-1"
    # A lone post that may exist is read by its slug (Get Post By Slug reads the posts, not an index that may
    # lag) before the create; the retry's read found the post the lost answer created.
    assert wix.calls == ["get", "create", "get"]
    assert len(wix.posts) == 1
    assert len(counting.needs) == len(wix.calls)
    assert all(needs == {"wix_requests:site-a": 1} for needs in counting.needs)


@pytest.mark.asyncio
async def test_a_retrys_wix_asks_name_the_retrys_slot_and_its_result_the_retrys_run(counting):
    # The run's own in-flight slot (stage.slot_key) is named in every ask, so the coordinator keeps it past
    # generate; the result says which run it ends, so the sink frees that run's slot and no other.
    request = {"request_id": "req-2", "site_id": "site-a", "retry": 1}
    article = {"title": "T", "excerpt": "E", "body": "B", "slug": "t", "tags": [], "image_prompt": "", "image_alt": ""}
    db = LedgerDb({("req-2", "publish-media"): {"id": "media-2", "url": "https://static.example/media-2.png"}})
    result = await publish.publish_post({"request": request, "article": article, "image": {"url": "u"}},
                                        FakeDeps(db, FlakyWix()))
    assert result["status"] == "DONE" and result["retry"] == 1
    assert counting.slots and set(counting.slots) == {"req-2#1"}


# --- a cover Wix could not fetch: a new one is made (publish.py), and a replay must follow it ----------

FIRST, SECOND = "https://replicate.example/first.png", "https://replicate.example/second.png"
ARTICLE = {"title": "T", "excerpt": "E", "body": "B", "slug": "t", "tags": [], "image_prompt": "p", "image_alt": ""}


class WorkerKilled(BaseException):
    """The worker dies (SIGKILL) here: nothing after it runs."""


class KilledBeforeRecording(LedgerDb):
    """A worker killed after Wix answered the create, before the post was recorded in the ledger."""

    def __init__(self, done: dict[tuple[str, str], dict]) -> None:
        super().__init__(done)
        self.killed = False

    async def complete_effect(self, request_id, effect, site_id, payload, *, owner):
        if effect == "publish" and not self.killed:
            self.killed = True
            raise WorkerKilled()
        await super().complete_effect(request_id, effect, site_id, payload, owner=owner)


class ImportingWix(FlakyWix):
    """Imports fail as expired for the URLs in `gone` (`once`: only the first time); every create lands."""

    def __init__(self, gone: set[str], *, once: bool = False) -> None:
        super().__init__()
        self.gone, self.once = gone, once
        self.created: list[str] = []

    async def import_image(self, site, url, *, display_name):
        from connectors.errors import ImageExpired

        self.calls.append(f"import {url}")
        if url in self.gone:
            if self.once:
                self.gone.discard(url)
            raise ImageExpired("wix", "POST site-media/v1/files/import: could not download the file", status=400)
        return {"id": f"media-{len(self.calls)}", "url": f"https://static.example/{url.rsplit('/', 1)[-1]}"}

    async def publish_draft(self, site, draft):
        self.calls.append("create")
        self.created.append(draft["seoSlug"])
        post = PublishedPost(f"post-{len(self.created)}", f"https://example.test/{draft['seoSlug']}", draft["seoSlug"])
        self.posts[draft["seoSlug"]] = post
        return post


def ledgered_covers(monkeypatch, db: LedgerDb) -> list[str]:
    """make_cover as covers.py does it: once per effect key (the ledger), a new Replicate image otherwise."""
    made: list[str] = []

    async def make_cover(request, article, deps, *, effect="image"):
        if (request["request_id"], effect) not in db.done:
            made.append(effect)
            url = SECOND if effect == "image-renewed" else f"https://replicate.example/{effect}.png"
            db.done[(request["request_id"], effect)] = {"url": url, "prediction_id": f"p{len(made)}", "created_at": 0}
        return db.done[(request["request_id"], effect)]

    monkeypatch.setattr(publish, "make_cover", make_cover)
    return made


@pytest.mark.asyncio
async def test_a_replay_after_a_renewed_cover_was_posted_does_not_post_again(monkeypatch, counting):
    db = KilledBeforeRecording({})
    ledgered_covers(monkeypatch, db)
    wix = ImportingWix({FIRST}, once=True)  # Wix could not fetch the first cover once (a blip of the image host)
    illustrated = {"request": {"request_id": "req-1", "site_id": "site-a"}, "article": ARTICLE, "image": {"url": FIRST}}

    # Attempt 1: the first cover taken for gone, a new one made and imported, the post created; then the
    # worker dies before the ledger records the post.
    with pytest.raises(WorkerKilled):
        await publish.publish_post(illustrated, FakeDeps(db, wix))
    assert len(wix.created) == 1

    # The replay of the same event (its offset was never committed) must find that post, not make a second one.
    result = await publish.publish_post(illustrated, FakeDeps(db, wix))
    assert result["status"] == "DONE"
    assert len(wix.created) == 1, f"the post was created {len(wix.created)} times: {wix.calls}"


@pytest.mark.asyncio
async def test_a_renewed_cover_that_is_gone_too_is_renewed_again(monkeypatch, counting):
    # An earlier attempt found the first cover gone and made a new one, but could not import it (Wix down
    # past the retry patience: FAILED, "retry it later"). The retry comes more than an hour later:
    # Replicate has deleted the new cover as well.
    db = LedgerDb({("req-1", "image-renewed"): {"url": SECOND, "prediction_id": "p1", "created_at": 0}})
    made = ledgered_covers(monkeypatch, db)
    wix = ImportingWix({FIRST, SECOND})
    illustrated = {"request": {"request_id": "req-1", "site_id": "site-a"}, "article": ARTICLE, "image": {"url": FIRST}}

    result = await publish.publish_post(illustrated, FakeDeps(db, wix))  # StageFailed on every retry, for good

    assert result["status"] == "DONE" and len(wix.created) == 1
    assert len(made) == 1  # one more cover, made because the renewed one was gone


class UnreachableHost(ImportingWix):
    """Wix can fetch no image at all (its media import cannot reach the image host)."""

    def __init__(self) -> None:
        super().__init__(set())

    async def import_image(self, site, url, *, display_name):
        self.gone.add(url)
        return await super().import_image(site, url, display_name=display_name)


@pytest.mark.asyncio
async def test_covers_wix_can_never_fetch_make_a_bounded_number_per_try_and_a_retry_tries_new_ones(monkeypatch, counting):
    db = LedgerDb({})
    made = ledgered_covers(monkeypatch, db)
    wix = UnreachableHost()
    illustrated = {"request": {"request_id": "req-1", "site_id": "site-a"}, "article": ARTICLE, "image": {"url": FIRST}}

    with pytest.raises(StageFailed) as first:
        await publish.publish_post(illustrated, FakeDeps(db, wix))
    assert len(made) == publish.NEW_COVERS_PER_TRY  # paid covers are bounded per try
    assert "blogstream retry req-1" in first.value.action and "image host" in first.value.action

    with pytest.raises(StageFailed):  # the operator's retry: new covers, not the old ones again
        await publish.publish_post(illustrated, FakeDeps(db, wix))
    assert len(made) == 2 * publish.NEW_COVERS_PER_TRY and len(set(made)) == len(made)
    assert not wix.created
