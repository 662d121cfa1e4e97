"""WixBlog against the Wix simulator (and Replicate's, for real image URLs)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.errors import ImageExpired, ProviderError, ProviderUnavailable, RateLimited, RejectedRequest
from connectors.replicate_images import ImageMaker
from connectors.wix_blog import PublishedPost, SiteCredentials, WixBlog, WixSite, draft_post, file_status

from .conftest import ANY_JSON, WIX_KEY, Simulator, broken_at, outcomes_in_turn, paths_in

SITE = SiteCredentials(site_id="site-a", wix_api_key=WIX_KEY, wix_member_id="member-1")


async def create_post(wix: WixBlog, site: WixSite, **fields) -> PublishedPost:
    return await wix.publish_draft(site, draft_post(site, **fields))
BODY = "Intro paragraph.\n\n## Why compost\n\n- less waste\n- better soil\n\nClosing words."


def test_site_satisfies_the_protocol_and_hides_its_key() -> None:
    assert isinstance(SITE, WixSite)
    assert WIX_KEY not in repr(SITE)


@pytest.mark.asyncio
async def test_import_create_and_find_by_slug(wix: WixBlog, images: ImageMaker, sim: Simulator) -> None:
    cover = await images.make_cover("a balcony garden", request_id="req-1")
    file = await wix.import_image(SITE, cover.url, display_name="req-1.png")
    assert file["id"] and file["url"].startswith("https://")

    post = await create_post(wix, 
        SITE,
        title="Composting on a balcony",
        excerpt="Small space, rich soil.",
        body_markdown=BODY,
        slug="composting-on-a-balcony",
        tags=["compost", "balcony", "compost"],
        image=file,
        image_alt="A worm bin on a balcony",
    )
    assert post == PublishedPost(
        post_id=post.post_id,
        url="https://site-a.wixsite.example/post/composting-on-a-balcony",
        slug="composting-on-a-balcony",
    )
    assert await wix.find_post_by_slug(SITE, "composting-on-a-balcony") == post
    assert await wix.find_post_by_slug(SITE, "never-published") is None

    ledger = sim.ledger()["wix"]
    assert ledger["posts_per_site"] == {"site-a": 1} and ledger["imports_total"] == 1


@pytest.mark.asyncio
async def test_post_without_image_or_member(wix: WixBlog) -> None:
    owner_site = SiteCredentials(site_id="site-b", wix_api_key=WIX_KEY)  # no member id: the key acts as owner
    post = await create_post(wix, 
        owner_site, title="T", excerpt="", body_markdown="Text.", slug="t", tags=[], image=None, image_alt=""
    )
    assert post.url.endswith("/post/t")


@pytest.mark.asyncio
async def test_taken_slug_is_reported_as_wix_renamed_it(wix: WixBlog) -> None:
    kwargs = dict(title="Same", excerpt="", body_markdown="x", slug="same", tags=[], image=None, image_alt="")
    first = await create_post(wix, SITE, **kwargs)
    second = await create_post(wix, SITE, **kwargs)
    assert first.slug == "same" and second.slug == "same-1" and second.post_id != first.post_id
    assert await wix.find_post_by_slug(SITE, "same") == first


@pytest.mark.asyncio
async def test_html_in_user_text_stays_literal(wix: WixBlog) -> None:
    topic = '<script>alert("x")</script> & <b>friends</b>'
    post = await create_post(wix, 
        SITE,
        title=topic,
        excerpt=topic,
        body_markdown=f"## {topic}\n\n{topic}",
        slug="html-topic",
        tags=["<i>tag</i>"],
        image=None,
        image_alt=topic,
    )
    stored = await wix._request(  # read back what Wix stored, as plain JSON
        SiteCredentials(site_id="site-a", wix_api_key=WIX_KEY), "GET", "blog/v3/posts/slugs/html-topic"
    )
    body = stored.json()["post"]
    assert post.slug == "html-topic"
    assert body["title"] == topic and body["excerpt"] == topic and body["hashtags"] == ["<i>tag</i>"]
    assert "&lt;" not in stored.text  # sent as-is, not pre-escaped: Wix escapes text on render


@pytest.mark.asyncio
async def test_missing_site_id_is_an_actionable_rejection(wix: WixBlog) -> None:
    with pytest.raises(RejectedRequest) as info:
        await wix.find_post_by_slug(SiteCredentials(site_id="", wix_api_key=WIX_KEY), "anything")
    exc = info.value
    assert exc.status == 403 and not exc.retryable
    assert "sites table" in exc.message and "site_id" in exc.message
    assert WIX_KEY not in str(exc) and WIX_KEY not in repr(exc)


@pytest.mark.asyncio
async def test_missing_api_key_is_an_actionable_rejection(wix: WixBlog) -> None:
    with pytest.raises(RejectedRequest) as info:
        await wix.import_image(SiteCredentials("site-a", ""), "https://example.com/a.png", display_name="a.png")
    assert info.value.status == 401 and "wix_api_key" in info.value.message
    assert not isinstance(info.value, ImageExpired)


@pytest.mark.asyncio
async def test_expired_replicate_output_raises_image_expired(
    wix: WixBlog, images: ImageMaker, sim: Simulator
) -> None:
    sim.configure({"replicate": {"output_ttl_seconds": 0.3}})
    cover = await images.make_cover("a balcony garden", request_id="req-2")
    await asyncio.sleep(0.5)
    # Wix answers the import PENDING and downloads after: the file FAILED is what says the URL is gone.
    pending = await wix.import_image(SITE, cover.url, display_name="req-2.png")
    assert file_status(pending) == "PENDING"
    await asyncio.sleep(0.05)  # latency_file_ready x latency_scale: at most 20 ms here
    [looked] = await wix.get_files(SITE, [pending["id"]])
    assert file_status(looked) == "FAILED"
    sim.configure({"wix": {"latency_file_ready": 0}})  # the download done as Wix answers: FAILED in the answer
    with pytest.raises(ImageExpired) as info:
        await wix.import_image(SITE, cover.url, display_name="req-2.png")
    exc = info.value
    assert isinstance(exc, RejectedRequest) and not exc.retryable
    assert "new image" in exc.message and "site-a" in exc.message and WIX_KEY not in str(exc)


@pytest.mark.asyncio
async def test_invalid_url_is_rejected_not_expired(wix: WixBlog) -> None:
    with pytest.raises(RejectedRequest) as info:
        await wix.import_image(SITE, "not a url", display_name="x.png")
    assert not isinstance(info.value, ImageExpired) and "url" in info.value.message


@pytest.mark.asyncio
async def test_429_maps_to_rate_limited(wix: WixBlog, sim: Simulator) -> None:
    sim.configure({"wix": {"site_rpm": 1}})
    await wix.find_post_by_slug(SITE, "a")
    with pytest.raises(RateLimited) as info:
        await wix.find_post_by_slug(SITE, "a")
    exc = info.value
    assert exc.status == 429 and exc.retryable and exc.retry_after is not None and exc.retry_after >= 1
    # Limits are per site: another site is unaffected.
    assert await wix.find_post_by_slug(SiteCredentials("site-z", WIX_KEY), "a") is None


@pytest.mark.asyncio
async def test_server_errors_map_to_unavailable(wix: WixBlog, sim: Simulator) -> None:
    sim.configure({"wix": {"error_rate": 1.0}})
    with pytest.raises(ProviderUnavailable) as info:
        await create_post(wix, 
            SITE, title="T", excerpt="", body_markdown="x", slug="t", tags=[], image=None, image_alt=""
        )
    assert info.value.status in (500, 503) and info.value.retryable


def _draft(slug: str, **fields) -> dict:
    return draft_post(SITE, title=fields.get("title", f"Post {slug}"), excerpt="Short.", body_markdown=BODY, slug=slug,
                      tags=["a"], image=fields.get("image"), image_alt="alt")


@pytest.mark.asyncio
async def test_bulk_import_gives_a_file_or_an_error_per_image(wix: WixBlog, images: ImageMaker, sim: Simulator) -> None:
    cover = await images.make_cover("a balcony garden", request_id="req-bulk")
    gone = cover.url.rsplit("/", 1)[0] + "/gone0.png"
    sim.configure({"wix": {"latency_file_ready": 0}})  # each file READY or FAILED in the answer
    answers = await wix.import_images(SITE, [(cover.url, "a.png"), (gone, "b.png"), ("https://example.com/c.png", "c")])
    assert [type(a).__name__ for a in answers] == ["dict", "ImageExpired", "dict"]
    assert answers[0]["url"].startswith("https://") and answers[2]["displayName"] == "c"
    assert WIX_KEY not in str(answers[1]) and "site-a" in str(answers[1])
    assert sim.ledger()["wix"]["admitted"] == 1   # one call for three images


@pytest.mark.asyncio
async def test_bulk_create_gives_a_post_or_an_error_per_draft_and_finds_them_by_slug(
    wix: WixBlog, sim: Simulator
) -> None:
    drafts = [_draft("bulk-1"), _draft("bulk-2", title=" "), _draft("bulk-3")]
    answers = await wix.create_posts(SITE, drafts)
    assert isinstance(answers[0], PublishedPost) and answers[0].slug == "bulk-1"
    assert isinstance(answers[1], RejectedRequest) and not answers[1].retryable and "title" in str(answers[1])
    assert isinstance(answers[2], PublishedPost) and answers[2].url.endswith("/post/bulk-3")
    found = await wix.find_posts_by_slugs(SITE, ["bulk-1", "bulk-2", "bulk-3", "never"])
    assert found == {"bulk-1": answers[0], "bulk-3": answers[2]}
    assert sim.ledger()["wix"]["admitted"] == 2 and sim.ledger()["wix"]["posts_total"] == 2


@pytest.mark.asyncio
async def test_bulk_item_failures_are_transient_and_a_lost_answer_is_unavailable(wix: WixBlog, sim: Simulator) -> None:
    sim.configure({"wix": {"bulk_item_error_rate": 1.0}})
    answers = await wix.create_posts(SITE, [_draft("flaky-1"), _draft("flaky-2")])
    assert all(isinstance(a, ProviderUnavailable) and a.retryable for a in answers)
    sim.configure({"wix": {"bulk_item_error_rate": 0.0, "lost_answer_rate": 1.0}})
    with pytest.raises(ProviderUnavailable):
        await wix.create_posts(SITE, [_draft("lost-1")])
    sim.configure({"wix": {"lost_answer_rate": 0.0}})
    assert set(await wix.find_posts_by_slugs(SITE, ["lost-1", "flaky-1"])) == {"lost-1"}


@pytest.mark.asyncio
async def test_a_post_whose_answer_was_lost_is_found_by_its_slug_while_the_query_index_lags(wix: WixBlog,
                                                                                           sim: Simulator) -> None:
    """Query Posts reads an index that may not show a post created moments ago; Get Post By Slug reads the post.
    (publish_batches.py looks lost creates up with the query only: a lagging index can still post twice.)"""
    sim.configure({"wix": {"lost_answer_rate": 1.0, "query_lag_seconds": 3600}})
    with pytest.raises(ProviderUnavailable):
        await wix.publish_draft(SITE, _draft("lagging-1"))
    sim.configure({"wix": {"lost_answer_rate": 0.0}})
    assert await wix.find_posts_by_slugs(SITE, ["lagging-1"]) == {}
    found = await wix.find_post_by_slug(SITE, "lagging-1")
    assert found is not None and found.slug == "lagging-1"
    sim.configure({"wix": {"query_lag_seconds": 0.0}})
    assert await wix.find_posts_by_slugs(SITE, ["lagging-1"]) == {"lagging-1": found}
    assert sim.ledger()["wix"]["posts_total"] == 1


# --------------------------------------------------------------------------- hostile answers

_URL = {"base": "https://site.wixsite.com/blog", "path": "/post/s-1"}
_FILE = {"id": "f1", "url": "https://static.wixstatic.com/media/f1.png", "displayName": "c", "operationStatus": "READY"}
_POST = {"id": "p1", "slug": "s-1", "url": _URL}
_DRAFT_POST = {"id": "p1", "seoSlug": "s-1", "url": _URL}


def _results(item: dict) -> dict:
    return {"results": [{"itemMetadata": {"originalIndex": i, "success": True}, "item": item} for i in (0, 1)]}


# Each public call with the answer Wix gives when all is well: the test breaks one node of it.
_CALLS = {
    "import_image": (lambda w: w.import_image(SITE, "https://replicate.delivery/a.png", display_name="c"),
                     {"file": _FILE}),
    "get_files": (lambda w: w.get_files(SITE, ["f1", "f2"]), {"files": [_FILE, {**_FILE, "id": "f2"}]}),
    "find_post_by_slug": (lambda w: w.find_post_by_slug(SITE, "s-1"), {"post": _POST}),
    "publish_draft": (lambda w: w.publish_draft(SITE, _draft("s-1")), {"draftPost": _DRAFT_POST}),
    "import_images": (lambda w: w.import_images(SITE, [("https://r.d/a.png", "a"), ("https://r.d/b.png", "b")]),
                      _results(_FILE)),
    "create_posts": (lambda w: w.create_posts(SITE, [_draft("s-1"), _draft("s-2")]), _results(_DRAFT_POST)),
    "find_posts_by_slugs": (lambda w: w.find_posts_by_slugs(SITE, ["s-1", "s-2"]), {"posts": [_POST, _POST]}),
}


@st.composite
def _hostile_call(draw: st.DrawFn) -> tuple[str, int, bytes]:
    name = draw(st.sampled_from(sorted(_CALLS)))
    template = _CALLS[name][1]
    status = draw(st.sampled_from([200, 200, 200, 201, 400, 404, 409, 429, 500]))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=30))
    else:
        body = json.dumps(broken_at(template, draw(st.sampled_from(paths_in(template))), draw(ANY_JSON))).encode()
    return name, status, body


def _well_formed(outcome: Any) -> bool:
    if isinstance(outcome, ProviderError):
        return True
    if isinstance(outcome, PublishedPost):
        return (isinstance(outcome.post_id, str) and bool(outcome.post_id) and isinstance(outcome.url, str)
                and (outcome.slug is None or isinstance(outcome.slug, str)))
    if isinstance(outcome, dict) and "id" in outcome:  # an imported file
        return isinstance(outcome["id"], str) and isinstance(outcome["url"], str) and bool(outcome["id"])
    return False


@settings(max_examples=60, deadline=None)
@given(calls=st.lists(_hostile_call(), min_size=1, max_size=6))
def test_any_answer_is_a_result_of_its_kind_or_a_provider_error(calls: list) -> None:
    """Whatever Wix answers (any status, any body, a good answer with one node broken), each call
    returns what it promises, whole (ids and URLs as text), or raises a ProviderError; nothing else."""
    outcomes = outcomes_in_turn(lambda url: WixBlog(base_url=url, timeout=5.0, max_connections=2),
                                [(_CALLS[name][0], [(status, body)]) for name, status, body in calls])
    for (name, status, _), outcome in zip(calls, outcomes):
        items = list(outcome.values()) if name == "find_posts_by_slugs" and isinstance(outcome, dict) else \
            outcome if isinstance(outcome, list) else [outcome]
        assert all(item is None and name == "find_post_by_slug" or _well_formed(item) for item in items), \
            (name, status, outcome)


@pytest.mark.parametrize(("item", "made_nothing"), [
    ({"itemMetadata": {"originalIndex": 1, "success": False, "error": {"code": "INTERNAL_ERROR"}}}, True),
    ({"itemMetadata": {"originalIndex": 1, "success": False, "error": {"code": "UNAVAILABLE"}}}, True),
    ({"itemMetadata": {"originalIndex": 1, "success": False, "error": {"code": "DEADLINE_EXCEEDED"}}}, False),
    (None, False),   # Wix left the item out of its answer
])
def test_a_bulk_item_is_done_nothing_only_when_wix_said_it_failed(item: dict | None, made_nothing: bool) -> None:
    """A failed item Wix answered for was not made: its retry needs no look-up. One it left out, or whose time
    ran out, may exist: its retry looks it up first (publish_batches.py), or it could be posted twice."""
    first = {"itemMetadata": {"originalIndex": 0, "success": True}, "item": _DRAFT_POST}
    body = {"results": [first] + ([item] if item else []), "bulkActionMetadata": {}}
    [answers] = outcomes_in_turn(lambda url: WixBlog(base_url=url, timeout=5.0, max_connections=2),
                                 [(_CALLS["create_posts"][0], [(200, json.dumps(body).encode())])])
    assert not isinstance(answers[0], ProviderError) and isinstance(answers[1], ProviderError)
    assert answers[1].retryable and answers[1].done_nothing is made_nothing
