"""The cover image of a request (Replicate), made at most once per request and purpose.

Stage 2 makes it; stage 3 makes a new one when Replicate has already deleted
the first (it keeps outputs one hour) before the post could import it.
"""
from __future__ import annotations

from typing import Any

from streams.limiter.specs import REPLICATE_REQUESTS
from streams.pipeline.deps import Deps
from streams.pipeline.stage import call_with_permits, effect_once

STAGE = "image"  # the stage whose permits and ledger entries a cover counts under


async def make_cover(request: dict[str, Any], article: dict[str, Any], deps: Deps, *, effect: str = STAGE) -> dict[str, Any]:
    """One cover image per request (per `effect` key); Replicate is paid once."""
    request_id, site_id = request["request_id"], request["site_id"]
    assert deps.images is not None
    images = deps.images

    async def create() -> dict[str, Any]:
        cover = await call_with_permits(
            stage=STAGE,
            request_id=request_id,
            site_id=site_id,
            needs={REPLICATE_REQUESTS: 1},
            call=lambda: images.make_cover(article["image_prompt"], request_id=request_id),
        )
        return {"url": cover.url, "prediction_id": cover.prediction_id, "created_at": cover.created_at_ms}

    image, _ = await effect_once(deps, request_id, effect, site_id, create)
    return image
