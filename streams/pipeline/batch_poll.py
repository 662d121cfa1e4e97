"""The bulk lane, part 2: running batches polled, each result line back into the pipeline.

A timer on every worker sends due batches (batch_collect.py) and looks at running ones
(each under its claim, at most every BLOGSTREAM_OPENAI_BATCH_POLL_SECONDS). When a batch
ends, each line's article is stored as the request's `generate` effect (the ledger the
real-time lane uses) and the request goes back to blog.requests: the generate stage
finds the article there and produces the draft, so it continues into the image stage
like any real-time draft (and a cancelled or paused request is treated as any other).

A line without an article (a server error, a refusal, a batch that expired, failed or
was cancelled) is queued for the next batch, or goes to the real-time lane
(BLOGSTREAM_OPENAI_BATCH_FAILED_LINES): nothing a batch held is lost. Sending back is
an outbox (store/batches.py, `sent_back`): a worker that stops after storing a line's
end and before sending its request leaves it to the next sweep. Every batch a line was in
that gave it no article is one of its tries, unless validation refused other lines of the
file (they leave the lane): a line that fails every batch ends too.

A batch OpenAI cannot give for now (429, 5xx, no answer, our key refused) is looked at
again later, longer after each failure (`poll_failed`); one it no longer has (a 404 for
the batch or a results file, another 4xx) ends, its lines going on as above.
"""
from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from connectors.errors import ProviderError
from connectors.openai_batches import BatchClient, BatchInfo, LineResult, read_results
from store.batches import BatchRow, HeldLine
from streams.app import app, requests_topic
from streams.log_limit import LogLimit
from streams.pipeline.batch_collect import CLAIM_SECONDS, STAGE, batch_client, send_batches, submit
from streams.pipeline.deps import Deps, deps
from streams.pipeline.factory import send_record
from streams.pipeline.spend import record_batch_line, record_batch_share
from streams.pipeline.stage import written_problems
from streams.settings import settings

log = logging.getLogger(__name__)

SEND_BACK_AFTER_SECONDS = 30.0  # a line settled this long ago and not sent back: its worker stopped
EFFECT_LEASE_SECONDS = 30.0
_failures = LogLimit(log, "bulk lane: a pass failed (the next one tries again)")


async def send_back(request: dict[str, Any]) -> None:
    """The request to blog.requests again (awaited: durable before its line is marked sent)."""
    await send_record(requests_topic, request["site_id"], "BlogRequest", request)


async def run_once(deps: Deps, client: BatchClient, send: Any = send_back) -> None:
    """One pass: send due batches, look at running ones, send back what a stopped worker left."""
    assert deps.db is not None
    await send_batches(deps, client)
    rows = await deps.db.claim_batches(deps.worker_id, lease_seconds=CLAIM_SECONDS,
                                       poll_seconds=settings.openai_batch_poll_seconds)
    for row in rows:
        if row.state in ("assembled", "submitting"):
            await submit(deps, client, row)
        else:
            await poll(deps, client, row, send)
    for line in await deps.db.lines_to_send_back(older_than=SEND_BACK_AFTER_SECONDS):
        await send(line.request)
        await deps.db.sent_back(line.request_id)


async def poll(deps: Deps, client: BatchClient, row: BatchRow, send: Any = send_back) -> None:
    """Look at a running batch; once it ended, settle every line it still holds."""
    assert deps.db is not None and row.batch_id is not None
    db, owner = deps.db, deps.worker_id
    try:
        info, results, unreadable, output_lost = await _read(deps, client, row)
    except ProviderError as exc:  # a passing fault, or our key refused: the batch and its results wait at OpenAI
        await _poll_later(deps, row, exc)
        return
    if unreadable is None and not info.ended:
        await db.mark_batch(row.batch_key, owner, "submitted", provider_status=info.status, release=True)
        return
    lines = await db.batched_lines(row.batch_key)
    share = _usage_shares(row, info) if output_lost else None
    refused = _refused_line_numbers(info)
    named_ours = bool(refused & set(range(1, len(lines) + 1)))  # validation named lines of this file
    left = 0
    for number, line in enumerate(lines, 1):  # the file lists its lines in this order (batch_collect.py)
        if number % 500 == 0 and not await db.extend_batch_claim(row.batch_key, owner, lease_seconds=CLAIM_SECONDS):
            return  # a big batch outlived our claim and another worker has it: it settles the rest
        result = results.get(line.request_id)
        if result is not None and result.billed is not None:  # once per completion id: a replay records nothing
            await record_batch_line(deps, line.request_id, line.site_id, result.billed)
        elif share is not None:  # its result is gone with the output file; once per batch and line
            await share(deps, line)
        if result is not None and result.article is not None:
            left += not await _write(deps, row, line, result, send)
        elif ((await db.get_effect(line.request_id, STAGE)) or {}).get("cancelled"):
            await db.settle_line(line.request_id, row.batch_key, "cancelled", "cancelled while its batch ran")
        else:
            reason, permanent, counted = _no_article(row, info, result, unreadable,
                                                     refused_by_validation=number in refused, named_ours=named_ours)
            await _failed(deps, row, line, reason, send, permanent=permanent, counted=counted)
    counts = f"{len(lines) - left} of {len(lines)} lines settled"
    if left:  # an effect claim was busy: the rest at the next poll
        await db.mark_batch(row.batch_key, owner, "submitted", provider_status=info.status, release=True)
        return
    await db.mark_batch(row.batch_key, owner, "ended", provider_status=None if unreadable else info.status,
                        error=unreadable, release=True)
    log.info("batch %s (%s) %s: %s", row.batch_key, row.batch_id, "unreadable" if unreadable else info.status, counts)


def _refused_line_numbers(info: BatchInfo) -> set[int]:
    return {int(e["line"]) for e in info.errors if e.get("line")} if info.status == "failed" else set()


def _waits(exc: ProviderError) -> bool:
    """Is the batch worth looking at again: a passing fault, or our key refused (an operator fixes it)?"""
    return exc.retryable or exc.credentials_refused


async def _read(deps: Deps, client: BatchClient,
                row: BatchRow) -> tuple[BatchInfo, dict[str, LineResult], str | None, bool]:
    """The batch and, once it ended, its lines' results. Raises the ProviderErrors worth waiting for
    (`_waits`); the third value says why OpenAI cannot give the batch or some of its results at all
    (a 404 for a batch or a file that is gone, another 4xx): its lines go on without them. The fourth:
    the output file (the answered lines, what was billed) could not be read."""
    assert deps.db is not None and row.batch_id is not None
    try:
        info = await client.retrieve(row.batch_id)
    except ProviderError as exc:
        if _waits(exc):
            raise
        return BatchInfo(row.batch_id, "unknown"), {}, f"OpenAI cannot give batch {row.batch_id}: {exc}", False
    if not info.ended and info.status != "cancelling" and await deps.db.batch_all_cancelled(row.batch_key):
        log.info("batch %s (%s): every request in it was cancelled; cancelling the batch", row.batch_key, row.batch_id)
        try:
            info = await client.cancel(row.batch_id)  # lines that already ran are billed; the rest are not
        except ProviderError as exc:  # it ended meanwhile (409), or OpenAI is away: the next poll sees which
            log.warning("batch %s (%s): not cancelled (%s); looked at again at the next poll", row.batch_key,
                        row.batch_id, exc)
    if not info.ended:
        return info, {}, None, False
    results: dict[str, LineResult] = {}
    unreadable, output_lost = None, False
    for file_id in (info.error_file_id, info.output_file_id):  # an article wins over an error
        if file_id:
            try:
                results.update(read_results(await client.content(file_id), row.model))
            except ProviderError as exc:
                if _waits(exc):
                    raise
                unreadable = f"OpenAI cannot give the results of batch {row.batch_id} (file {file_id}): {exc}"
                output_lost = output_lost or file_id == info.output_file_id
    return info, results, unreadable, output_lost


def _usage_shares(row: BatchRow, info: BatchInfo) -> Any:
    """OpenAI no longer gives the output file, but its lines ran and were billed: the batch's `usage`,
    split over its lines (input and cached tokens by each line's prompt, output evenly, from the batch's
    own figures, so a share does not depend on which lines are left), one row per line keyed by the
    batch's id: a replay records nothing twice. Returns what records a line's share (None: nothing to)."""
    usage = info.usage
    if usage is None:
        log.error("batch %s (%s): OpenAI gives neither its results nor its usage: what its %d lines cost is not "
                  "recorded (see your OpenAI organisation's usage page)", row.batch_key, row.batch_id, row.lines)
        return None
    if not (usage.input_tokens or usage.output_tokens):
        return None
    log.warning("batch %s (%s): OpenAI no longer gives its results; its usage (%d input, %d output tokens) is "
                "recorded split over its lines", row.batch_key, row.batch_id, usage.input_tokens, usage.output_tokens)
    count = Decimal(max(row.lines, 1))

    async def record(deps: Deps, line: HeldLine) -> None:
        # by prompt size (the batch's prompt tokens are its lines' sum), evenly if it has none
        part = Decimal(line.prompt_tokens) / row.prompt_tokens if row.prompt_tokens > 0 else 1 / count
        await record_batch_share(deps, line.request_id, line.site_id, call_id=f"{row.batch_id}:usage:{line.request_id}",
                                 model=row.model, input_tokens=usage.input_tokens * part,
                                 output_tokens=usage.output_tokens / count, cached_tokens=usage.cached_tokens * part)
    return record


async def _poll_later(deps: Deps, row: BatchRow, exc: ProviderError) -> None:
    assert deps.db is not None
    failures, wait = await deps.db.poll_failed(row.batch_key, deps.worker_id,
                                               poll_seconds=settings.openai_batch_poll_seconds, error=str(exc))
    if exc.credentials_refused:
        log.error("batch %s (%s): OpenAI refused the API key while it was read (%s): fix OPENAI_API_KEY; its results "
                  "wait at OpenAI (a batch's files are kept 30 days), looked at again in %.0f s", row.batch_key,
                  row.batch_id, exc, wait)
    else:
        log.warning("batch %s (%s): could not read it now (%d time(s) in a row), tried again in %.0f s: %s",
                    row.batch_key, row.batch_id, failures, wait, exc)


async def _write(deps: Deps, row: BatchRow, line: HeldLine, result: LineResult, send: Any) -> bool:
    """Store a line's article as its request's generate effect, then send the request back. False: try later."""
    assert deps.db is not None and result.article is not None
    db = deps.db
    if problems := written_problems(result.article):  # as the real-time lane does: before it is stored
        shown = "; ".join(str(p) for p in problems[:4])
        await _to_realtime(deps, row, line, f"the model's article breaks the rules for articles ({shown})", send)
        return True
    owner = f"{deps.worker_id}:{row.batch_key}"
    claim = await db.claim_effect(line.request_id, STAGE, line.site_id, owner=owner, lease_seconds=EFFECT_LEASE_SECONDS)
    if claim.state == "busy":
        return False
    if claim.state == "foreign":  # the id is another site's: nothing of this line may touch it
        await db.settle_line(line.request_id, row.batch_key, "cancelled", "the request id belongs to another site")
        return True
    if claim.state == "done" and (claim.payload or {}).get("cancelled"):  # cancelled while in the batch
        await db.settle_line(line.request_id, row.batch_key, "cancelled", "cancelled while its batch ran")
        return True
    if claim.state == "acquired":
        payload = {"article": result.article, "usage": result.usage, "lane": "batch", "batch_id": row.batch_id}
        await db.complete_effect(line.request_id, STAGE, line.site_id, payload, owner=owner)
    # done before (a cancellation, or this line settled by a worker that stopped): the stage reads it
    if await db.settle_line(line.request_id, row.batch_key, "written"):
        await send(line.request)
        await db.sent_back(line.request_id)
    return True


def _no_article(row: BatchRow, info: BatchInfo, result: LineResult | None, unreadable: str | None, *,
                refused_by_validation: bool, named_ours: bool) -> tuple[str, bool, bool]:
    """Why a line gave no article: (reason, permanent: the batch lane cannot help, counted: a try of the line's)."""
    error: ProviderError | None = result.error if result is not None else None
    if error is not None:
        return str(error), not error.retryable, True
    if refused_by_validation:
        return f"the Batch API refused its line: {_validation_errors(info)}", True, True
    if unreadable is not None:  # the articles may have been written (and billed): they cannot be had
        return unreadable, False, True
    if info.status == "failed":
        # Validation named other lines of the file: they leave the lane, so this line's next batch can pass
        # (not its try). Named none (a limit, the file as a whole): a try, or the line could fail every batch.
        return f"its batch {row.batch_id} failed validation: {_validation_errors(info)}", False, not named_ours
    return f"its batch {row.batch_id} ended {info.status} before the line ran", False, True


async def _failed(deps: Deps, row: BatchRow, line: HeldLine, reason: str, send: Any, *, permanent: bool,
                  counted: bool) -> None:
    """A line that gave no article: the next batch, or the real-time lane."""
    assert deps.db is not None
    if (settings.openai_batch_failed_lines == "retry" and not permanent
            and line.attempts + counted < settings.openai_batch_max_attempts):
        await deps.db.requeue_line(line.request_id, row.batch_key, error=reason, counted=counted)
        return
    await _to_realtime(deps, row, line, reason, send)


async def _to_realtime(deps: Deps, row: BatchRow, line: HeldLine, reason: str, send: Any) -> None:
    assert deps.db is not None
    log.warning("bulk request %s of site %s goes through the real-time lane: %s", line.request_id, line.site_id, reason)
    if await deps.db.settle_line(line.request_id, row.batch_key, "realtime", reason):
        await send(line.request)
        await deps.db.sent_back(line.request_id)


def _validation_errors(info: BatchInfo) -> str:
    shown = "; ".join(("" if e.get("line") is None else f"line {e['line']}: ") + f"{e.get('code') or 'error'}: "
                      f"{e.get('message') or 'no message'}" for e in info.errors[:3])
    return shown or "OpenAI gave no reason"


def tick_seconds() -> float:
    """How often the timer runs: often enough for both waits, never a busy loop."""
    return min(10.0, max(0.2, min(settings.openai_batch_collect_seconds, settings.openai_batch_poll_seconds) / 2))


@app.timer(interval=tick_seconds())
async def batch_lane_timer() -> None:
    if not settings.openai_batch_enabled:
        return
    try:
        await deps.ready()
        await run_once(deps, batch_client())
    except Exception as exc:  # an outage or a fault: the next tick tries again, the ledger keeps what was done
        _failures.failed(exc)
    else:
        _failures.ok()
