"""The cover image of a request (Replicate), made at most once per request and purpose.

Stage 2 makes it; stage 3 makes a new one when Replicate has already deleted
the first (it keeps outputs one hour) before the post could import it.

Every Replicate call takes a permit: a create from the create budget
(`REPLICATE_REQUESTS`; Replicate allows 600 a minute), each poll and cancel
from the other-endpoints budget (`REPLICATE_OTHER_REQUESTS`; 3000 a minute).
Each try is one HTTP request (the SDK's hidden retries are off), and a failed
poll is tried again as a poll, never as a new prediction.

A request pays for one prediction. Its id goes into the effect ledger the
moment the create answers (`<effect>-prediction`), so a retry, in this process
or on another worker after a crash or rebalance, follows that prediction
instead of creating one more. A create whose answer was lost (a reset, a
timeout, a 5xx) may have been made all the same: before the next create, the
prediction is looked for among Replicate's newest (one call of the other-endpoints
budget) and followed if exactly one has its model and input (Replicate has no
idempotency key). Only a prediction that failed, was canceled, ran
past the timeout (canceled first) or whose image Replicate no longer has is
replaced, by `<effect>-prediction-2`, `-3`, ...: each a ledger entry of its own,
so a replay walks the same chain and reuses whatever is still good.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from connectors.errors import ProviderError, RateLimited
from connectors.replicate_images import PredictionState
from streams.limiter.specs import REPLICATE_OTHER_REQUESTS, REPLICATE_REQUESTS
from streams.pipeline.deps import Deps
from streams.pipeline.spend import check_budget, record_prediction
from streams.pipeline.stage import StageFailed, call_with_permits, effect_once, slot_of
from streams.settings import settings

log = logging.getLogger(__name__)

STAGE = "image"  # the stage whose permits and ledger entries a cover counts under
MAX_CHAIN = 50  # predictions one request may have had in all (a replay walks them): a safety stop
CLOCK_SLACK_MS = 30_000  # a lost create is looked for among predictions Replicate says it made since its send, less this


def prediction_key(effect: str, n: int) -> str:
    """The ledger entry of a request's n-th prediction for `effect` (1: the first)."""
    return f"{effect}-prediction" if n == 1 else f"{effect}-prediction-{n}"


async def make_cover(request: dict[str, Any], article: dict[str, Any], deps: Deps, *, effect: str = STAGE) -> dict[str, Any]:
    """One cover image per request (per `effect` key); Replicate is paid once."""
    request_id, site_id = request["request_id"], request["site_id"]
    lane = request.get("priority", "interactive")
    assert deps.images is not None
    images = deps.images

    async def replicate(needs: dict[str, float], call: Callable[[], Awaitable[Any]], **hooks: Any) -> Any:
        return await call_with_permits(stage=STAGE, request_id=request_id, site_id=site_id, needs=needs, call=call,
                                       lane=lane, slot=slot_of(request), **hooks)

    async def poll(state: PredictionState) -> PredictionState:
        return await replicate({REPLICATE_OTHER_REQUESTS: 1}, lambda: images.get_prediction(state.id))

    async def cancel(state: PredictionState) -> PredictionState:
        return await replicate({REPLICATE_OTHER_REQUESTS: 1}, lambda: images.cancel_prediction(state.id))

    async def follow(state: PredictionState, recorded: bool) -> PredictionState:
        """Until the prediction ends; one still running past the timeout is canceled."""
        if recorded and (state.running or state.status == "succeeded"):
            state = await poll(state)  # what the ledger holds is the create's answer: ask how it is now
        started = (state.created_at_ms or _now_ms()) / 1000
        delay = images.first_poll_s
        while state.running:
            if time.time() - started > images.timeout_s:
                log.warning("prediction %s for request %s still %s after %.0f s: canceling it",
                            state.id, request_id, state.status, images.timeout_s)
                state = await cancel(state)
                if state.running:  # Replicate takes a moment to stop it
                    await asyncio.sleep(delay)
                    state = await poll(state)
                    if state.running:
                        raise StageFailed(STAGE, request_id, site_id, f"prediction {state.id} did not stop when canceled",
                                          f"Cancel it on replicate.com, then: blogstream retry {request_id}")
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, images.max_poll_s)
            state = await poll(state)
        return state

    async def produce() -> dict[str, Any]:
        created, last = 0, ""
        for n in range(1, MAX_CHAIN + 1):
            fresh: dict[str, bool] = {}

            async def create() -> dict[str, Any]:
                await check_budget(deps, site_id, request_id)  # no new prediction for a site a spend cap holds
                prompt, sent = article["image_prompt"], []

                async def send() -> PredictionState:
                    sent.append(_now_ms())
                    return await images.create_prediction(prompt, request_id=request_id)

                async def made_anyway(exc: ProviderError) -> PredictionState | None:
                    # A create that failed other than by a 429 may have been made, its answer lost (a reset, a
                    # timeout): it is looked for before the next create, so it is not paid for twice.
                    if isinstance(exc, RateLimited):
                        return None
                    return await replicate({REPLICATE_OTHER_REQUESTS: 1}, lambda: images.find_prediction(
                        prompt, since_ms=sent[0] - CLOCK_SLACK_MS))

                state = await replicate({REPLICATE_REQUESTS: 1}, send, recover=made_anyway)
                fresh["state"] = True
                return state.as_dict()

            if created >= settings.max_attempts and (await deps.db.get_effect(request_id, prediction_key(effect, n))) is None:
                break
            recorded, _ = await effect_once(deps, request_id, prediction_key(effect, n), site_id, create)
            created += bool(fresh)
            state = await follow(PredictionState.from_dict(recorded), recorded=not fresh)
            await record_prediction(deps, request_id, site_id, state)  # once per prediction id
            if state.usable:
                cover = images.cover_of(state, request_id=request_id)
                return {"url": cover.url, "prediction_id": cover.prediction_id, "created_at": cover.created_at_ms}
            ended = state.status if state.status != "succeeded" else "expired"
            last = f"prediction {state.id} {ended}: {state.error or 'no error text'}"
            log.warning("%s for request %s on site %s: making a new one", last, request_id, site_id)
        raise StageFailed(
            STAGE, request_id, site_id, f"no usable image after {created} new Replicate predictions, the last {last}",
            f"Check the image prompt and the Replicate model, then: blogstream retry {request_id}",
        )

    image, _ = await effect_once(deps, request_id, effect, site_id, produce)
    return image


def _now_ms() -> int:
    return int(time.time() * 1000)
