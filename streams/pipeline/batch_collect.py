"""The bulk lane, part 1: bulk article requests held in Postgres and sent as OpenAI batches.

With BLOGSTREAM_OPENAI_BATCH_ENABLED, the generate stage hands a bulk request to
`hold` instead of asking for real-time permits: its line is stored (store/batches.py)
and its event acked. `send_batches` (run by batch_poll.py's timer on every worker)
puts queued lines into one JSONL file per model within the Batch API's limits (lines
and bytes per file, enqueued tokens per model) and submits it: the batch is recorded
before any call, marked `submitting` before it is created, and a restart that finds
it `submitting` looks it up by its key before creating it again. Batch work takes no
real-time RPM/TPM permit. batch_poll.py reads the results.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal
from typing import Any

from connectors.errors import ProviderError
from connectors.openai_batches import BatchClient, batch_line, encode_line, prompt_tokens
from store.batches import HELD, BatchRow
from streams.costs.prices import load_prices
from streams.pipeline.deps import Deps
from streams.pipeline.stage import RequestOfAnotherSite
from streams.settings import settings

log = logging.getLogger(__name__)

STAGE = "generate"  # the effect a line's article is stored under: the real-time lane's own
CLAIM_SECONDS = 120.0  # a dead worker's batch passes to another this soon
FIND_BACK_SECONDS = 600.0  # a batch we may have created is looked for this far before its row


def takes(request: dict[str, Any]) -> bool:
    """Does the batch lane take this request (a bulk one, with the lane on)?"""
    return settings.openai_batch_enabled and request.get("priority") == "bulk"


def line_for(request: dict[str, Any]) -> dict[str, Any]:
    return batch_line(request, model=settings.openai_model, max_tokens_cap=settings.openai_max_tokens)


async def hold(request: dict[str, Any], deps: Deps) -> bool:
    """True: the batch lane holds `request` (nothing to produce now; its article comes back later).

    False: the stage goes on as for any request, because the article is already in the
    effect ledger (written by a batch, or a cancellation) or the line was sent to the
    real-time lane.
    """
    assert deps.db is not None
    line = line_for(request)
    state = await deps.db.hold_batch_line(  # 'effect': its generate effect is done already
        request, model=settings.openai_model, prompt_tokens=prompt_tokens(request),
        size=len(encode_line(line)), max_usd=worst_case_usd(request, line["body"]["max_tokens"]),
    )
    if state == "foreign":  # another site's line has this id: this request must not touch it
        raise RequestOfAnotherSite(STAGE, request["request_id"], request["site_id"])
    return state in HELD


def worst_case_usd(request: dict[str, Any], max_tokens: int) -> Decimal:
    """What the line may cost at most (its prompt estimate and max_tokens at batch prices; 0 without a price):
    a capped site's lines go into a file only while this fits in what it has left (store/batches.py)."""
    price = load_prices(settings.prices_file).tokens(settings.openai_model)
    return Decimal(0) if price is None else price.cost(prompt_tokens(request), max_tokens, lane="batch")


async def in_running_batch(request: dict[str, Any], deps: Deps) -> bool:
    """A request the lane does not take (sent again without "priority": "bulk"): True while a running batch
    holds its bulk copy's line (already paid for: the batch sends the request back with its article, so
    the real-time lane must not pay for it too). A line still queued leaves the lane: False."""
    if not settings.openai_batch_enabled:
        return False
    assert deps.db is not None
    state = await deps.db.take_queued_line(request["request_id"], request["site_id"])
    if state == "foreign":  # another site's bulk line has this id: neither taken nor waited for
        raise RequestOfAnotherSite(STAGE, request["request_id"], request["site_id"])
    return state == "batched"


_client: BatchClient | None = None


def batch_client() -> BatchClient:
    """One Batch API client per worker, made on first use (inside the worker's loop)."""
    global _client
    if _client is None:
        _client = BatchClient(base_url=settings.openai_base_url, api_key=settings.openai_api_key,
                              timeout=settings.openai_timeout)
    return _client


async def send_batches(deps: Deps, client: BatchClient) -> list[str]:
    """Send every batch that is due now; returns their keys."""
    assert deps.db is not None
    db = deps.db
    await db.end_cancelled_lines()
    sent = []
    while True:
        row = await db.assemble_batch(
            f"bs-{uuid.uuid4().hex}", settings.openai_model, max_lines=settings.openai_batch_max_requests,
            max_bytes=settings.openai_batch_max_bytes, max_enqueued_tokens=settings.openai_batch_enqueued_tokens,
            collect_seconds=settings.openai_batch_collect_seconds, owner=deps.worker_id, lease_seconds=CLAIM_SECONDS,
            global_daily_usd=settings.global_daily_budget_usd or None,
        )
        if row is None:
            return sent
        await submit(deps, client, row)
        sent.append(row.batch_key)


async def submit(deps: Deps, client: BatchClient, row: BatchRow) -> None:
    """Create the batch of `row` (claimed by this worker) at OpenAI, at most once."""
    assert deps.db is not None
    db, owner = deps.db, deps.worker_id
    try:
        if row.state == "submitting":  # a worker stopped while creating it: it may exist
            found = await client.find(row.batch_key, created_after=row.created_at.timestamp() - FIND_BACK_SECONDS)
            if found is not None:
                await db.mark_batch(row.batch_key, owner, "submitted", batch_id=found.batch_id,
                                    provider_status=found.status, release=True)
                log.info("batch %s: found %s, created before a restart", row.batch_key, found.batch_id)
                return
        if not await db.mark_batch(row.batch_key, owner, "submitting"):
            return  # another worker took it over
        lines = await db.batched_lines(row.batch_key)
        data = b"".join(encode_line(line_for(line.request)) for line in lines)
        # A big file may take longer to upload than the claim lasts: the claim is renewed meanwhile, and
        # checked before the batch is created, so a worker that took it over never sees a second batch appear.
        renewing = asyncio.ensure_future(_keep_claim(db, row.batch_key, owner))
        try:
            info = await client.submit(row.batch_key, data, still_ours=lambda: db.extend_batch_claim(
                row.batch_key, owner, lease_seconds=CLAIM_SECONDS))
        finally:
            renewing.cancel()
            await asyncio.wait([renewing])  # its end is not ours to raise; a cancel of this task still is
        if info is None:
            log.warning("batch %s: another worker took it over while its file was uploaded; not created here",
                        row.batch_key)
            return
    except ProviderError as exc:
        if exc.retryable:  # tried again when its claim runs out; a batch that was created is found then
            log.warning("batch %s (%d lines) not sent yet, tried again in %.0f s: %s", row.batch_key, row.lines,
                        CLAIM_SECONDS, exc)
            return
        await _refused(deps, row, str(exc))
        return
    await db.mark_batch(row.batch_key, owner, "submitted", batch_id=info.batch_id, provider_status=info.status,
                        release=True)
    log.info("batch %s: %d bulk requests sent as %s (%s)", row.batch_key, row.lines, info.batch_id, info.status)


async def _keep_claim(db: Any, batch_key: str, owner: str) -> None:
    """Renew `owner`'s claim on a batch while its file is uploaded and the batch created."""
    while True:
        await asyncio.sleep(CLAIM_SECONDS / 4)
        try:
            if not await db.extend_batch_claim(batch_key, owner, lease_seconds=CLAIM_SECONDS):
                return  # another worker has it: the check before the create stops this one
        except Exception:  # Postgres away: tried again; the check before the create decides
            continue


async def _refused(deps: Deps, row: BatchRow, reason: str) -> None:
    """OpenAI refused the file or the batch outright: its requests go to the real-time lane."""
    assert deps.db is not None
    log.error("batch %s refused by OpenAI (%s): its %d requests go through the real-time lane", row.batch_key,
              reason, row.lines)
    for line in await deps.db.batched_lines(row.batch_key):
        await deps.db.settle_line(line.request_id, row.batch_key, "realtime", f"the batch was refused: {reason}")
    await deps.db.mark_batch(row.batch_key, deps.worker_id, "ended", error=reason, release=True)
