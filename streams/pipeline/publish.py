"""Stage 3, blog.illustrated → blog.results: publish the post on the site (Wix).

Wix has no idempotency key on create, so a post is published once per request
by three guards: the effect ledger (request → post), a slug that embeds the
request id, and a look-up by that slug before any create that might repeat an
earlier, interrupted one. A site's imports and creates that are ready together
go out as bulk calls (publish_batches.py).
"""
from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from connectors.errors import ImageExpired
from connectors.wix_blog import FILE_FAILED, FILE_PENDING, WixBlog, WixSite, draft_post, file_status
from streams.app import illustrated_topic, results_topic
from streams.pipeline.covers import make_cover
from streams.pipeline.deps import Deps
from streams.pipeline.factory import build_stage
from streams.pipeline.publish_batches import site_batches
from streams.contract import decode
from streams.pipeline.stage import StageCancelled, StageFailed, check_written, effect_once, now_ms, slot_of
from streams.settings import settings

STAGE = "publish"


NEW_COVERS_PER_TRY = 2  # covers one try makes when Wix finds the one before gone; a retry may make more
IMPORT_POLL_SECONDS = (2.0, 5.0)  # the first look at a file Wix is still importing, and the longest gap after


def renewal_key(effect: str, n: int) -> str:
    """The ledger entry of the n-th renewed cover ("image") or of its import ("publish-media"); 0: the first."""
    return effect if n == 0 else f"{effect}-renewed" if n == 1 else f"{effect}-renewed-{n}"


def post_slug(article_slug: str, request_id: str) -> str:
    """Readable and unique per request, so a post can be found again by slug."""
    tag = hashlib.sha1(request_id.encode()).hexdigest()[:8]
    return f"{(article_slug or 'post')[:50].strip('-')}-{tag}"


async def publish_post(illustrated: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """BlogIllustrated → BlogResult (DONE with the post's id and URL)."""
    request, article = illustrated["request"], illustrated["article"]
    request_id, site_id = request["request_id"], request["site_id"]
    check_written(STAGE, article, request_id, site_id)  # nothing reaches a site that breaks the rules
    site = await deps.site(site_id)
    if site is None:
        raise StageFailed(STAGE, request_id, site_id, "the site is no longer registered", f"Register it again, then: blogstream retry {request_id}")
    assert deps.wix is not None
    wix = deps.wix
    slug = post_slug(article.get("slug", ""), request_id)
    lane = request.get("priority", "interactive")
    slot = slot_of(request)  # the run's in-flight slot, named in its permit asks

    async def import_cover(image: dict[str, Any]) -> dict[str, Any]:
        file = await site_batches.import_image(wix, site, request_id=request_id, lane=lane, url=image["url"],
                                               display_name=f"{slug}.png", slot=slot)
        return await imported(wix, site, file, url=image["url"], request_id=request_id, lane=lane, slot=slot)

    async def publish() -> dict[str, Any]:
        # The newest cover an earlier attempt made because the one before was gone: the older ones are
        # not used again (that attempt may have posted with it, and its media import says so).
        n, image = 0, illustrated["image"]
        assert deps.db is not None
        while renewed := await deps.db.get_effect(request_id, renewal_key("image", n + 1)):
            n, image = n + 1, renewed
        made = 0
        while True:
            try:
                media, earlier_attempt = await effect_once(deps, request_id, renewal_key("publish-media", n), site_id,
                                                           lambda: import_cover(image))
                break
            except StageFailed as failed:
                if not isinstance(failed.__cause__, ImageExpired):
                    raise
                if made >= NEW_COVERS_PER_TRY:  # not the hour Replicate keeps them: Wix cannot fetch from it
                    raise StageFailed(
                        STAGE, request_id, site_id,
                        f"Wix could not download {made + 1} cover images in a row, {made} of them new ({failed.reason})",
                        f"Check that the site's Wix media import can reach the image host, then: blogstream retry "
                        f"{request_id} (it makes a new cover)",
                    ) from failed.__cause__
            # Replicate deleted the image (it keeps outputs one hour): make a new one.
            n, made = n + 1, made + 1
            image = await make_cover(request, article, deps, effect=renewal_key("image", n))
        draft = draft_post(site, title=article["title"], excerpt=article["excerpt"], body_markdown=article["body"],
                           slug=slug, tags=article.get("tags", []), image=media,
                           image_alt=article.get("image_alt", ""))
        # Once the cover was imported by an earlier attempt, that attempt may have posted too.
        post = await site_batches.create_post(wix, site, request_id=request_id, lane=lane, draft=draft,
                                              maybe_posted=earlier_attempt, slot=slot)
        return {"post_id": post.post_id, "post_url": post.url}

    posted, _ = await effect_once(deps, request_id, STAGE, site_id, publish)
    if posted.get("cancelled"):  # cancelled before its post was started (store/parked.py, cancel_marks)
        raise StageCancelled(STAGE, request_id, site_id, posted.get("reason") or "cancelled by an operator")
    return {
        "request_id": request_id,
        "site_id": site_id,
        "status": "DONE",
        "stage": STAGE,
        "post_id": posted["post_id"],
        "post_url": posted["post_url"],
        "title": article["title"],
        "error": None,
        "attempts": illustrated.get("attempts", 0),
        "usage": illustrated.get("usage"),
        "finished_at": now_ms(),
        "retry": request.get("retry", 0),
    }


async def imported(wix: WixBlog, site: WixSite, file: dict[str, Any], *, url: str, request_id: str,
                   lane: str, slot: str = "") -> dict[str, Any]:
    """The file once Wix has downloaded it: Wix answers an import first and downloads after, so a post made
    with a file still PENDING would show no cover if the download then FAILED. The site's looks that are due
    together go out as one Wix call, with its permit; a FAILED file is a StageFailed caused by ImageExpired
    (publish makes a new cover)."""
    site_id, file_id = site.site_id, str(file["id"])
    loop = asyncio.get_running_loop()
    patience = max(settings.wix_timeout, settings.retry_patience_seconds)  # a slow Wix costs time, not requests
    deadline = loop.time() + patience
    delay = IMPORT_POLL_SECONDS[0]
    while file_status(file) == FILE_PENDING:
        await asyncio.sleep(delay)
        delay = min(delay * 2, IMPORT_POLL_SECONDS[1])
        file = await site_batches.look_at_file(wix, site, request_id=request_id, lane=lane, file_id=file_id,
                                               slot=slot)
        if file_status(file) == FILE_PENDING and loop.time() >= deadline:
            raise StageFailed(
                STAGE, request_id, site_id,
                f"Wix had not finished importing the cover image after {patience:g} s (file {file_id})",
                f"Check the site's Media Manager and Wix's status page, then: blogstream retry {request_id}",
            )
    if file_status(file) == FILE_FAILED:
        gone = WixBlog.import_failed(site, file, url)
        raise StageFailed(STAGE, request_id, site_id, str(gone)) from gone
    return file


publish_runner = build_stage(
    STAGE, source=illustrated_topic, decode=lambda data: decode("BlogIllustrated", data), step=publish_post,
    next_topic=results_topic, next_record="BlogResult",
)
