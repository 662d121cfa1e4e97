"""The front door: blog requests over HTTP, served by every worker (docs/intake.md).

    POST /api/blogs                     one request (a JSON object), or {"requests": [...]} (a batch)
    GET  /api/intake                    the pending figure and the limits the intake admits against

A submission is checked completely before anything is produced: bad JSON,
wrong types, unknown fields or sites, duplicate ids, oversized bodies and
batches are answered with a 4xx naming the item and field, and never reach
the stages. A good submission is produced to blog.requests (Avro, keyed by
site id) and answered 202 only after the broker acked every record: accepted
means durable in Kafka. A batch is all or nothing as far as the answer goes
(a 503 after a partial produce is safe to retry: request ids are idempotency
keys, the pipeline makes one row and one post per id).

Backpressure: pending = requests accepted and not yet DONE/FAILED/CANCELLED,
across all workers. A submission of n requests is admitted only while
pending + n <= QUEUE_SIZE_LIMIT (with bulk requests in it: while it leaves
QUEUE_INTERACTIVE_SHARE of the limit free) and, per site, site pending + k <=
sites.max_queued for its interactive requests, sites.max_queued_bulk for its bulk
ones (counted apart: a site's backfill never fills its interactive room);
otherwise 429 with Retry-After. While the queue is full the 429 comes before
the body is parsed, so a flood of refusals costs the worker little. The figure (`PendingGauge`) is Postgres'
PENDING rows, re-read at most once per `intake_pending_refresh_seconds`, plus
what this worker accepted that the sink has not written yet and what it is
producing right now, so one worker never overshoots; other workers' last
second of acceptances shows up with the next read.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from faust.web import Request, Response

from streams.api.admission import Decision, QueueUnknown, budget_rejection, gauge, rejection
from streams.api.burst_gc import burst_gc
from streams.api import access
from streams.api.http import ApiView, IntakeError, json_response, retry_after_header, unavailable
from streams.api.producer import produce
from streams.api.validation import (
    OwnerLookup, check_items, conflict, invalid, parse_body, reused_id_errors, site_ids, unknown_site_errors,
)
from streams.app import app
from streams.contract.errors import path_segment
from streams.pipeline.deps import deps
from streams.settings import settings

log = logging.getLogger(__name__)

# A 429 is answered after this pause. It costs nothing (an idle connection) and
# holds a client that ignores Retry-After to about one refusal per second per
# connection, so a flood of refusals cannot take the CPU the worker's own
# stages need to make room (without it, a 200-connection flood stopped them).
REFUSAL_PAUSE_SECONDS = 1.0


@app.task
async def _warm_up() -> None:
    """Connect to Postgres and read the pending figure when the worker starts, not
    during its first submission (which would make every request of a first burst wait)."""
    loop = type(asyncio.get_running_loop())
    log.info("intake: warming up (event loop %s.%s)", loop.__module__, loop.__qualname__)
    try:
        await deps.ready()
        await gauge.fresh()
    except Exception:  # the first submission tries again (and answers 503 if it must)
        log.warning("intake: warming up failed; the first submission will try again", exc_info=True)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it is known to be larger than `limit` bytes."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_big(limit)
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _too_big(limit)
        chunks.append(chunk)
        if size == length:  # all of it: no need to ask again for the end
            return chunk if len(chunks) == 1 else b"".join(chunks)


def _too_big(limit: int) -> IntakeError:
    return IntakeError(
        413, f"the body is larger than {limit} bytes; send smaller batches",
        max_body_bytes=limit, max_batch=settings.intake_max_batch,
    )


async def registered_sites(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """site id -> Site (None: not registered) for every well-formed site id in the submission."""
    try:
        return {site_id: await deps.site(site_id) for site_id in site_ids(requests)}
    except Exception:
        log.warning("intake: reading the sites registry failed", exc_info=True)
        raise unavailable("the sites registry (Postgres) could not be read") from None


async def _request_sites(request_ids: list[str]) -> dict[str, str]:
    await deps.ready()
    assert deps.db is not None
    return await deps.db.request_sites(request_ids)


owner_lookup = OwnerLookup(_request_sites)  # 409 for an id another site uses (docs/intake.md, tenancy)


async def submit(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The whole intake decision for one body; IntakeError for every answer but 202.

    A full queue is answered first, before the body is even parsed: under a flood
    the refusals must cost the worker as little as possible, since its pipeline
    needs the CPU to make room. (So while the queue is full, bad input gets 429
    too, and its 4xx when it is sent again.)
    """
    if not gauge.is_fresh():
        try:
            await gauge.fresh()
        except QueueUnknown:
            raise unavailable("the number of pending requests could not be read (is Postgres up?)") from None
    if (pending := gauge.total()) >= settings.queue_size_limit:
        raise rejection(Decision(False, "queue_full", pending, settings.queue_size_limit))
    items, batch = parse_body(raw, max_batch=settings.intake_max_batch)
    requests, errors = check_items(items, batch=batch)
    sites = await registered_sites(requests)
    errors += unknown_site_errors(requests, {s: site is not None for s, site in sites.items()}, batch=batch)
    if errors:
        raise invalid(sorted(errors, key=lambda e: e.item))
    try:
        owners = await owner_lookup.owners([r["request_id"] for r in requests])
    except Exception:
        log.warning("intake: reading request ids failed", exc_info=True)
        raise unavailable("the request ids (Postgres) could not be read") from None
    if reused := reused_id_errors(requests, owners, batch=batch):
        raise conflict(reused)
    if refused := budget_rejection(sites):
        raise refused
    decision = gauge.admit(
        requests, limit=settings.queue_size_limit, site_limits={s: site.max_queued for s, site in sites.items()},
        bulk_site_limits={s: site.max_queued_bulk for s, site in sites.items()},
        interactive_reserve=interactive_reserve(),
    )
    if not decision.ok:
        raise rejection(decision)
    produced = False
    try:
        await produce(requests, settings.intake_produce_timeout)
        produced = True
    except Exception as exc:
        log.warning("intake: producing %d request(s) failed: %s", len(requests), type(exc).__name__)
        raise not_confirmed([r["request_id"] for r in requests]) from None
    finally:
        gauge.settle(requests, produced=produced)
    return requests, batch


def interactive_reserve() -> int:
    """Requests of the queue bulk ones leave free for interactive ones (BLOGSTREAM_QUEUE_INTERACTIVE_SHARE)."""
    return int(settings.queue_size_limit * settings.queue_interactive_share)


def not_confirmed(request_ids: list[str]) -> IntakeError:
    """503 for a produce the broker did not confirm in time. Its records may still be in Kafka and run (an
    ack after the deadline, a batch partly taken): sending them again is safe only under the same ids, so
    the answer lists them, ids the intake made up for requests sent without one included."""
    return IntakeError(
        503, "nothing was accepted: Kafka did not confirm the request(s) in time, and they may still run; "
             "send them again in a moment with the same request_ids (listed here: a request sent without one "
             "must take its id from this list, or it would run twice)",
        headers=retry_after_header(), request_ids=request_ids,
    )


async def post_blogs(request: web.Request) -> web.Response:
    """POST /api/blogs: one request or a batch; 202 once the broker acked every record.

    A plain aiohttp handler rather than a Faust `View`: this is the one path that
    takes thousands of requests per second, and Faust's view dispatch and web
    sensors (a Prometheus histogram and counter per request) were about a tenth
    of its CPU. The intake's own answer is the same.
    """
    # The token, the origin and a Content-Type that is not JSON were checked already (access.guard).
    burst_gc.begin()
    try:
        raw = await read_body(request, settings.intake_max_body_bytes)
        if "Content-Type" not in request.headers:  # after the size: an oversized body is 413 whatever its type
            raise IntakeError(415, "the body must be JSON: send it with Content-Type: application/json")
        requests, batch = await submit(raw)
    except IntakeError as exc:
        burst_gc.end()
        if exc.status == 429:
            await asyncio.sleep(REFUSAL_PAUSE_SECONDS)
        return json_response(exc.body(), exc.status, exc.headers)
    except BaseException:
        burst_gc.end()
        raise
    burst_gc.end()
    ids = [r["request_id"] for r in requests]
    if batch:
        return json_response({"accepted": len(ids), "request_ids": ids}, 202)
    return json_response({"accepted": 1, "request_ids": ids, "request_id": ids[0]}, 202,
                          {"Location": f"/api/blogs/{path_segment(ids[0])}"})


app.web.web_app.router.add_post("/api/blogs", post_blogs)
access.install(app.web.web_app)  # every route's token, origin and content type checks (streams/api/access.py)


@app.page("/api/intake")
class IntakeState(ApiView):
    async def get(self, request: Request) -> Response:
        try:
            await gauge.fresh()
        except QueueUnknown:
            return self.failure(unavailable("the number of pending requests could not be read"))
        return self.answer(
            {
                **gauge.figures(),
                "queue_size_limit": settings.queue_size_limit,
                "queue_interactive_reserve": interactive_reserve(),
                "max_batch": settings.intake_max_batch,
                "max_body_bytes": settings.intake_max_body_bytes,
                "auth": bool(settings.intake_token),
            }
        )
