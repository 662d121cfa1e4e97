"""Stage 3, blog.illustrated → blog.results: publish the post on the site (Wix).

Wix has no idempotency key on create, so a post is published once per request
by three guards: the effect ledger (request → post), a slug that embeds the
request id, and a look-up by that slug before any create that might repeat an
earlier, interrupted one.
"""
from __future__ import annotations

import hashlib
from typing import Any

from connectors.errors import ImageExpired
from streams.app import illustrated_topic, results_topic
from streams.pipeline.covers import make_cover
from streams.pipeline.deps import Deps
from streams.pipeline.factory import build_stage
from streams.limiter.client import budgets
from streams.limiter.specs import wix_requests
from streams.contract import decode
from streams.pipeline.stage import StageFailed, call_with_permits, check_written, effect_once, now_ms

STAGE = "publish"


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
    budget = wix_requests(site_id)
    slug = post_slug(article.get("slug", ""), request_id)
    lane = request.get("priority", "interactive")

    async def wix_call(call):
        return await call_with_permits(stage=STAGE, request_id=request_id, site_id=site_id, needs={budget: 1}, call=call,
                                       lane=lane)

    async def import_cover(image: dict[str, Any]) -> dict[str, Any]:
        return await wix_call(lambda: wix.import_image(site, image["url"], display_name=f"{slug}.png"))

    async def publish() -> dict[str, Any]:
        media_key = "publish-media"
        try:
            media, earlier_attempt = await effect_once(deps, request_id, media_key, site_id, lambda: import_cover(illustrated["image"]))
        except StageFailed as failed:
            if not isinstance(failed.__cause__, ImageExpired):
                raise
            # Replicate deleted the image (it keeps outputs one hour): make a new one.
            image = await make_cover(request, article, deps, effect="image-renewed")
            media, earlier_attempt = await effect_once(deps, request_id, "publish-media-renewed", site_id, lambda: import_cover(image))
        state = {"maybe_posted": earlier_attempt}

        async def create_once():
            if state["maybe_posted"]:
                found = await wix.find_post_by_slug(site, slug)
                if found is not None:
                    return found
                # The look-up used this attempt's permit; the create needs its own.
                await budgets.acquire(site_id=site_id, request_id=request_id, needs={budget: 1}, lane=lane)
            state["maybe_posted"] = True  # from here a retry might repeat a create that landed
            return await wix.create_post(
                site,
                title=article["title"],
                excerpt=article["excerpt"],
                body_markdown=article["body"],
                slug=slug,
                tags=article.get("tags", []),
                image=media,
                image_alt=article.get("image_alt", ""),
            )

        post = await wix_call(create_once)
        return {"post_id": post.post_id, "post_url": post.url}

    posted, _ = await effect_once(deps, request_id, STAGE, site_id, publish)
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
    }


publish_runner = build_stage(
    STAGE, source=illustrated_topic, decode=lambda data: decode("BlogIllustrated", data), step=publish_post,
    next_topic=results_topic, next_record="BlogResult",
)
