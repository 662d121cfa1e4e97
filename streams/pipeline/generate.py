"""Stage 1, blog.requests → blog.drafts: write the article with OpenAI.

Admission takes one of the site's in-flight slots (held until the request is
published or failed, across all workers) together with the OpenAI request and
token permits, so a site never has more than its cap of requests under way and
half-done work is finished before more of the same site starts. A request whose article
is in the effect ledger already (a `blogstream retry` after generate, a bulk request back
from the Batch API, a replay) asks for its slot alone: it is under way until its result too.
"""
from __future__ import annotations

from typing import Any

from connectors.errors import ProviderError, ProviderUnavailable
from streams import metrics
from streams.app import drafts_topic, requests_topic
from streams.pipeline import batch_collect
from streams.pipeline.deps import Deps
from streams.pipeline.factory import build_stage
from streams.pipeline.spend import check_budget, paid_article, record_article_cost
from streams.limiter.client import budgets
from streams.limiter.specs import OPENAI_REQUESTS, OPENAI_TOKENS
from streams.contract import decode_request
from streams.pipeline.stage import (
    StageCancelled, StageFailed, call_with_permits, check_written, current_effect, effect_once,
    look_until_found, now_ms, slot_of,
)
from streams.settings import settings

STAGE = "generate"


async def write_draft(request: dict[str, Any], deps: Deps) -> dict[str, Any] | None:
    """BlogRequest → BlogDraft. OpenAI is paid once per request id.

    None: a bulk request the batch lane holds; it comes back here with its article
    in the ledger (streams/pipeline/batch_poll.py).
    """
    request_id, site_id = request["request_id"], request["site_id"]
    site = await deps.site(site_id)
    if site is None:  # fails at once: nothing is retried, the partition goes on
        raise StageFailed(
            STAGE, request_id, site_id, f"site {site_id} is not registered",
            f"Register it (blogstream sites add {site_id} --wix-api-key ...), then: blogstream retry {request_id}",
        )
    if batch_collect.takes(request):
        if await batch_collect.hold(request, deps):
            return None
    elif await batch_collect.in_running_batch(request, deps):  # a bulk copy's batch pays for its article
        return None
    assert deps.writer is not None
    writer = deps.writer
    slot = slot_of(request)  # this run's in-flight slot: its own result frees it (sink.py)

    async def write() -> dict[str, Any]:
        estimate = writer.estimate_tokens(request)
        lane = request.get("priority", "interactive")

        async def settle(permit: Any, result: Any) -> None:
            used = result.usage.prompt_tokens + result.usage.completion_tokens
            await budgets.settle(permit, OPENAI_TOKENS, used, result.rate_limit)  # with the answer's x-ratelimit-*

        async def found_lost(exc: ProviderError) -> Any:  # after a failed try, before the next one
            if not answer_may_be_lost(exc):
                return None
            return await find_lost_article(deps, writer, request, slot=slot, lane=lane,
                                           wait=settings.openai_lost_answer_wait_seconds)

        # A claim taken over from a worker that died mid-call, or that stopped or gave up after losing an answer:
        # that call may have been answered and paid, or still be being written. When is not known (a claim left
        # to lapse is free at once, and a dead worker's call may have been sent just before it died), so the
        # whole wait. Until something is found or written, the claim would lapse again, not be freed: a stop or a
        # failed look here must leave the next run looking too. This look-up's permit is the run's first: it
        # takes the slot.
        under_way = current_effect()
        taken_over = under_way is not None and under_way.taken_over
        if taken_over:
            under_way.maybe_done = True
        if taken_over and (found := await find_lost_article(
                deps, writer, request, slot=slot, lane=lane, slot_limit=site.max_in_flight, weight=site.weight,
                wait=settings.openai_lost_answer_wait_seconds)):
            result = found
        else:
            # Before the permit too: a held site's request must not wait for an in-flight slot (those of its
            # requests parked in later stages stay taken until the cap is raised), it is parked instead.
            await check_budget(deps, site_id, request_id)
            result = await call_with_permits(
                stage=STAGE,
                request_id=request_id,
                site_id=site_id,
                needs={OPENAI_REQUESTS: 1, OPENAI_TOKENS: estimate},
                slot_limit=site.max_in_flight,
                slot=slot,
                weight=site.weight,
                lane=lane,
                # each attempt: the site's spend cap checked first, the call's cost recorded after
                call=lambda: paid_article(deps, request_id, site_id, lambda: write_article(writer, request),
                                          slot=slot),
                on_result=settle,
                recover=found_lost,
            )
        check_written(STAGE, result.article, request_id, site_id)  # before it is ledgered: a retry writes it again
        return {
            "article": result.article,
            "usage": {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens},
        }

    written, stored = await effect_once(deps, request_id, STAGE, site_id, write)
    if written.get("cancelled"):
        raise StageCancelled(STAGE, request_id, site_id, written.get("reason") or "cancelled by an operator")
    check_written(STAGE, written["article"], request_id, site_id)  # one from the ledger, written before these rules
    if stored:  # no permit took the run's slot: without one it went on to Replicate and Wix past the site's cap
        await check_budget(deps, site_id, request_id)  # a held site's request is parked, it waits for no slot
        await budgets.take_slot(site_id=site_id, request_id=slot, slot_limit=site.max_in_flight, weight=site.weight,
                                lane=request.get("priority", "interactive"))
    return {
        "request": request,
        "article": written["article"],
        "usage": written["usage"],
        "attempts": 1,
        "drafted_at": now_ms(),
    }


def answer_may_be_lost(exc: ProviderError) -> bool:
    """A failure after which OpenAI may have written (and billed) the article: no answer in time, a connection
    lost or an answer unreadable, a gateway's 502/504 or Cloudflare's 520/524 (OpenAI went on writing). Not a
    429, a refusal, an OpenAI 500/503 (it did not finish the call), nor an answer read and refused by our
    checks (its cost is recorded, its article unusable)."""
    return isinstance(exc, ProviderUnavailable) and exc.billed is None and exc.status in (None, 502, 504, 520, 524)


async def write_article(writer: Any, request: dict[str, Any]) -> Any:
    """One try's call; the effect under way is told whether a failure may have left a paid article behind."""
    under_way = current_effect()
    try:
        result = await writer.write_article(request, site_id=request["site_id"], request_id=request["request_id"])
    except ProviderError as exc:
        if under_way is not None:  # if the run ends on this failure, the next one looks first (stage.effect_once)
            under_way.maybe_done = answer_may_be_lost(exc)
        raise
    if under_way is not None:
        under_way.maybe_done = False  # answered: an article our checks refuse must not be found again
    return result


async def find_lost_article(deps: Deps, writer: Any, request: dict[str, Any], *, slot: str, lane: str,
                            slot_limit: int | None = None, weight: float = 1.0, wait: float = 0.0) -> Any:
    """The article OpenAI stored for the request (an earlier call's, its answer lost), None if none is listed
    within `wait` seconds.

    Each look is one List Chat Completions call on a request permit of its own (no tokens), in the stage's
    retry loop; the cost of what it finds is recorded once, under the completion's id. OpenAI does not say how
    soon a stored completion is listed: it is looked for again until `wait` has passed (look_until_found);
    one listed later than that is paid again.
    """
    if not writer.stores_completions:
        return None
    request_id, site_id = request["request_id"], request["site_id"]
    found = await look_until_found(lambda: call_with_permits(
        stage=STAGE, request_id=request_id, site_id=site_id, needs={OPENAI_REQUESTS: 1}, slot=slot, lane=lane,
        slot_limit=slot_limit, weight=weight,
        call=lambda: writer.find_stored_article(request, request_id=request_id),
    ), seconds=wait)
    if found is None:
        return None
    metrics.stored_articles_found.inc()
    under_way = current_effect()
    if under_way is not None:
        under_way.maybe_done = False  # found: nothing is left behind
    if found.billed is not None:
        await record_article_cost(deps, request_id, site_id, found.billed)
    return found


generate_runner = build_stage(
    STAGE, source=requests_topic, decode=decode_request, step=write_draft,
    next_topic=drafts_topic, next_record="BlogDraft", takes_slot=True,
)
