"""Stage 2, blog.drafts → blog.illustrated: make the cover image with Replicate."""
from __future__ import annotations

from typing import Any

from streams.app import app, drafts_topic, illustrated_topic
from streams.pipeline.deps import Deps, deps
from streams.limiter.coordinator import REPLICATE_REQUESTS
from streams.contract.records import decode
from streams.pipeline.runner import StageRunner
from streams.settings import settings
from streams.pipeline.stage import call_with_permits, effect_once, now_ms, run_stage_event

STAGE = "image"


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


async def illustrate(draft: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """BlogDraft → BlogIllustrated."""
    image = await make_cover(draft["request"], draft["article"], deps)
    return {
        "request": draft["request"],
        "article": draft["article"],
        "usage": draft["usage"],
        "image": image,
        "attempts": draft.get("attempts", 0),
        "illustrated_at": now_ms(),
    }


async def _step(draft: dict[str, Any]):
    await deps.ready()
    return illustrated_topic, "BlogIllustrated", await illustrate(draft, deps)


async def _handle(event: Any) -> None:
    await run_stage_event(STAGE, event, lambda data: decode("BlogDraft", data), _step)


image_runner = StageRunner(
    STAGE, _handle, concurrency=settings.stage_concurrency, read_ahead=settings.read_ahead, policy=deps.policy,
    topic=drafts_topic.get_topic_name(),
)


@app.agent(drafts_topic)
async def image(stream):
    await image_runner.consume(stream)
