"""Stage 2, blog.drafts → blog.illustrated: make the cover image with Replicate."""
from __future__ import annotations

from typing import Any

from streams.app import drafts_topic, illustrated_topic
from streams.pipeline.covers import make_cover
from streams.pipeline.deps import Deps
from streams.pipeline.factory import build_stage
from streams.contract import decode
from streams.pipeline.stage import StageCancelled, now_ms

STAGE = "image"


async def illustrate(draft: dict[str, Any], deps: Deps) -> dict[str, Any]:
    """BlogDraft → BlogIllustrated."""
    request = draft["request"]
    image = await make_cover(request, draft["article"], deps)
    if image.get("cancelled"):  # the ledger's cover is a cancellation (store/parked.py, cancel_marks)
        raise StageCancelled(STAGE, request["request_id"], request["site_id"],
                             image.get("reason") or "cancelled by an operator")
    return {
        "request": draft["request"],
        "article": draft["article"],
        "usage": draft["usage"],
        "image": image,
        "attempts": draft.get("attempts", 0),
        "illustrated_at": now_ms(),
    }


image_runner = build_stage(
    STAGE, source=drafts_topic, decode=lambda data: decode("BlogDraft", data), step=illustrate,
    next_topic=illustrated_topic, next_record="BlogIllustrated",
)
