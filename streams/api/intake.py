"""The front door: blog requests over HTTP, served by every worker (docs/intake.md).

    POST /api/blogs                     one request (a JSON object), or {"requests": [...]} (a batch)
    GET  /api/blogs/{request_id}        status and history of one request
    POST /api/blogs/{request_id}/retry  run a FAILED request again (after fixing what its error says)
    GET  /api/sites/{site_id}/blogs     a site's requests, newest first: ?limit=50&after=<last id>
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
pending + n <= QUEUE_SIZE_LIMIT and, per site, site pending + k <= sites.max_queued;
otherwise 429 with Retry-After. While the queue is full the 429 comes before
the body is parsed, so a flood of refusals costs the worker little. The figure (`PendingGauge`) is Postgres'
PENDING rows, re-read at most once per `intake_pending_refresh_seconds`, plus
what this worker accepted that the sink has not written yet and what it is
producing right now, so one worker never overshoots; other workers' last
second of acceptances shows up with the next read.
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from aiohttp import web
from faust.web import Request, Response, View

from streams.app import app, requests_topic
from streams.pipeline.deps import deps
from streams.contract.records import check_request, encode_checked
from streams.settings import settings

log = logging.getLogger(__name__)

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_PAGE = 500
DEFAULT_PAGE = 50
# Entries in the "accepted here, not yet written by the sink" set are forgotten
# after this long, so a lost sink write cannot keep the figure high forever.
UNSEEN_TTL_SECONDS = 600.0
# A 429 is answered after this pause. It costs nothing (an idle connection) and
# holds a client that ignores Retry-After to about one refusal per second per
# connection, so a flood of refusals cannot take the CPU the worker's own
# stages need to make room (without it, a 200-connection flood stopped them).
REFUSAL_PAUSE_SECONDS = 1.0


# --------------------------------------------------------------------------- errors


class IntakeError(Exception):
    """An answer other than 2xx: HTTP status, a one-sentence reason, optional details."""

    def __init__(
        self,
        status: int,
        error: str,
        *,
        headers: Mapping[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.error, **self.details}


@dataclass(frozen=True)
class ItemError:
    item: int  # index in the submission (0 for a single request)
    field: str  # path inside the submitted body, e.g. "requests[3].keywords[1]" or "topic"
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"item": self.item, "field": self.field, "message": self.message}


def invalid(errors: Sequence[ItemError]) -> IntakeError:
    shown = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    noun = "problem" if len(errors) == 1 else "problems"
    return IntakeError(
        422,
        f"nothing was accepted: {len(errors)} {noun}: {shown}{more}",
        errors=[e.as_dict() for e in errors],
    )


# --------------------------------------------------------------------------- parsing and validation (pure)


def parse_body(raw: bytes, *, max_batch: int) -> tuple[list[Any], bool]:
    """(items, is_batch) from a body; IntakeError 400/422 for what is not a submission."""
    if not raw.strip():
        raise IntakeError(400, "the body is empty: send one request as a JSON object, or {\"requests\": [...]}")
    try:
        # utf-8 with a leading BOM allowed, like "utf-8-sig" (whose codec is several times slower)
        value = json.loads((raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw).decode("utf-8"))
    except UnicodeDecodeError:
        raise IntakeError(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise IntakeError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise IntakeError(400, "the body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise IntakeError(
            422,
            "the body must be a JSON object: one request, or {\"requests\": [...]} for a batch",
            errors=[ItemError(0, "", "must be a JSON object").as_dict()],
        )
    if "requests" not in value:
        return [value], False
    extra = sorted(k for k in value if k != "requests")
    items = value["requests"]
    problems: list[ItemError] = [ItemError(0, k, "is not a field of a batch (only \"requests\")") for k in extra]
    if not isinstance(items, list):
        problems.append(ItemError(0, "requests", "must be a list of request objects"))
    elif not items:
        problems.append(ItemError(0, "requests", "must not be empty"))
    elif len(items) > max_batch:
        problems.append(ItemError(0, "requests", f"has {len(items)} requests; at most {max_batch} per batch (split it)"))
    if problems:
        raise invalid(problems)
    return items, True


def check_items(items: list[Any], *, batch: bool, now_ms: int | None = None) -> tuple[list[dict[str, Any]], list[ItemError]]:
    """Complete and validate every item: (the completed items, every problem found).

    A missing `request_id` gets a new one (then a retry is not idempotent: send your
    own ids), a missing `requested_at` is now. Ids must be unique within a batch.
    An item that is not an object is kept as {} so indexes stay aligned.
    """
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    errors: list[ItemError] = []
    requests: list[dict[str, Any]] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(ItemError(i, item_path(i, "", batch), "must be a JSON object with the request fields"))
            requests.append({})
            continue
        item = dict(item)
        if item.get("request_id") is None:
            item["request_id"] = uuid.uuid4().hex
        if item.get("requested_at") is None:
            item["requested_at"] = now_ms
        record, found = check_request(item)
        errors.extend(ItemError(i, item_path(i, e.field, batch), e.message) for e in found)
        request_id = item["request_id"]
        if isinstance(request_id, str) and not any(e.field == "request_id" for e in found):
            if request_id in first_index:
                errors.append(
                    ItemError(i, item_path(i, "request_id", batch),
                              f"repeats {item_path(first_index[request_id], 'request_id', batch)}; "
                              "every request needs its own id")
                )
            else:
                first_index[request_id] = i
        # A valid item is kept as its complete record (defaults filled), which is
        # what gets encoded: it is not checked a second time on the way to Kafka.
        requests.append(record if record is not None else item)
    return requests, errors


def item_path(i: int, name: str, batch: bool) -> str:
    if not batch:
        return name
    return f"requests[{i}].{name}" if name else f"requests[{i}]"


def site_ids(requests: list[dict[str, Any]]) -> set[str]:
    """The well-formed site ids in a submission (the others already have an error)."""
    return {r["site_id"] for r in requests if isinstance(r.get("site_id"), str) and _ID.fullmatch(r["site_id"])}


def unknown_site_errors(requests: list[dict[str, Any]], known: Mapping[str, bool], *, batch: bool) -> list[ItemError]:
    out = []
    for i, request in enumerate(requests):
        site_id = request.get("site_id")
        if isinstance(site_id, str) and site_id in known and not known[site_id]:
            out.append(
                ItemError(
                    i,
                    item_path(i, "site_id", batch),
                    f"site {site_id} is not registered (register it first: blogstream sites add {site_id} --wix-api-key ...)",
                )
            )
    return out


def bearer_ok(header: str | None, token: str) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`; always true when no token is set."""
    if not token:
        return True
    if not header:
        return False
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


# --------------------------------------------------------------------------- the pending figure


@dataclass(frozen=True)
class PendingSnapshot:
    """What Postgres said at one moment (one statement, one MVCC snapshot)."""

    by_site: dict[str, int]  # PENDING rows per site
    seen: set[str]  # which of the asked-about ids have a row (any status)


FetchPending = Callable[[list[str]], Awaitable[PendingSnapshot]]


class QueueUnknown(Exception):
    """The pending figure could not be read recently enough to admit anything."""


@dataclass
class Decision:
    ok: bool
    reason: str = ""  # "queue_full" | "site_queue_full"
    pending: int = 0
    limit: int = 0
    site_id: str | None = None
    room: int = 0  # how many requests (of this site, for site_queue_full) would be admitted now


class PendingGauge:
    """Global pending requests, cheap to read: one query per `refresh_seconds` at most.

    estimate = PENDING rows in Postgres (any worker's requests, once the sink wrote them)
             + ids this worker accepted that the last read did not find in Postgres yet
             + requests this worker is producing right now (reserved at admission)

    Reservation happens in the same synchronous step as the check, so concurrent
    submissions to one worker can never together pass the limit. What other workers
    accepted since the last read (at most `refresh_seconds` + the sink's batch delay)
    is the only part that can be stale.
    """

    def __init__(
        self,
        fetch: FetchPending,
        *,
        refresh_seconds: float = 1.0,
        max_age_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._db_by_site: dict[str, int] = {}
        self._db_total = 0
        self._as_of: float | None = None  # clock when the last good read started
        self._last_try = float("-inf")
        self._refreshing: asyncio.Future | None = None
        self._unseen: dict[str, tuple[str, float]] = {}  # request id -> (site, accepted at)
        self._unseen_by_site: Counter = Counter()
        self._reserved_total = 0
        self._reserved_by_site: Counter = Counter()

    # --- reading ---------------------------------------------------------------------------
    @property
    def age(self) -> float | None:
        return None if self._as_of is None else self._clock() - self._as_of

    def total(self) -> int:
        return self._db_total + len(self._unseen) + self._reserved_total

    def site(self, site_id: str) -> int:
        return self._db_by_site.get(site_id, 0) + self._unseen_by_site[site_id] + self._reserved_by_site[site_id]

    def is_fresh(self) -> bool:
        """True while the figure is less than `refresh_seconds` old (then `fresh()` has nothing to do)."""
        return self._as_of is not None and self._clock() - self._as_of < self.refresh_seconds

    async def fresh(self) -> None:
        """Make sure the figure is at most `refresh_seconds` old (shared single read); QueueUnknown if it cannot be."""
        now = self._clock()
        if self._as_of is not None and now - self._as_of < self.refresh_seconds:
            return
        if self._refreshing is None and now - self._last_try >= min(self.refresh_seconds, 1.0):
            self._refreshing = asyncio.ensure_future(self._refresh())
        if self._refreshing is not None:
            try:
                await asyncio.shield(self._refreshing)
            except Exception:
                pass  # logged by _refresh; judged by age below
        if self._as_of is None or self._clock() - self._as_of > self.max_age_seconds:
            raise QueueUnknown("the pending figure could not be read from Postgres")

    async def _refresh(self) -> None:
        started = self._last_try = self._clock()
        asked = list(self._unseen)
        try:
            snapshot = await self._fetch(asked)
        except Exception:
            log.warning("intake: reading the pending figure failed; keeping the last one", exc_info=True)
            raise
        finally:
            self._refreshing = None
        self._db_by_site = dict(snapshot.by_site)
        self._db_total = sum(snapshot.by_site.values())
        for request_id in snapshot.seen:
            self._forget(request_id)
        cutoff = started - UNSEEN_TTL_SECONDS
        stale = [rid for rid, (_, at) in self._unseen.items() if at < cutoff]
        if stale:
            log.warning("intake: %d accepted requests never reached Postgres within %.0fs; no longer counted",
                        len(stale), UNSEEN_TTL_SECONDS)
            for request_id in stale:
                self._forget(request_id)
        self._as_of = started

    def _forget(self, request_id: str) -> None:
        entry = self._unseen.pop(request_id, None)
        if entry is not None:
            self._unseen_by_site[entry[0]] -= 1
            if self._unseen_by_site[entry[0]] <= 0:
                del self._unseen_by_site[entry[0]]

    # --- admitting -------------------------------------------------------------------------
    def admit(self, requests: Sequence[Mapping[str, Any]], *, limit: int, site_limits: Mapping[str, int]) -> Decision:
        """Check and reserve in one synchronous step (no await between them)."""
        per_site: dict[str, int] = {}
        for r in requests:
            per_site[r["site_id"]] = per_site.get(r["site_id"], 0) + 1
        total = self.total()
        if total + len(requests) > limit:
            return Decision(False, "queue_full", total, limit, None, max(0, limit - total))
        for site_id, n in (sorted(per_site.items()) if len(per_site) > 1 else per_site.items()):
            site_pending, site_limit = self.site(site_id), site_limits[site_id]
            if site_pending + n > site_limit:
                return Decision(False, "site_queue_full", site_pending, site_limit, site_id, max(0, site_limit - site_pending))
        self._reserved_total += len(requests)
        reserved = self._reserved_by_site
        for site_id, n in per_site.items():
            reserved[site_id] += n
        return Decision(True, pending=total, limit=limit)

    def settle(self, requests: Sequence[Mapping[str, Any]], *, produced: bool) -> None:
        """End a reservation: produced requests count as accepted until Postgres has them."""
        now = self._clock()
        for request in requests:
            site_id = request["site_id"]
            self._reserved_total -= 1
            self._reserved_by_site[site_id] -= 1
            if self._reserved_by_site[site_id] <= 0:
                del self._reserved_by_site[site_id]
            if produced and request["request_id"] not in self._unseen:
                self._unseen[request["request_id"]] = (site_id, now)
                self._unseen_by_site[site_id] += 1

    def figures(self) -> dict[str, Any]:
        age = self.age
        return {
            "pending": self.total(),
            "pending_in_database": self._db_total,
            "accepted_here_not_yet_in_database": len(self._unseen),
            "being_produced_here": self._reserved_total,
            "age_seconds": None if age is None else round(age, 3),
        }


_PENDING_SQL = """
SELECT site_id, count(*)::int AS n, NULL::text AS id
  FROM blog_generations WHERE status = 'PENDING' GROUP BY site_id
UNION ALL
SELECT NULL, NULL, id FROM blog_generations WHERE id = ANY($1::text[])
"""


async def fetch_pending(ids: list[str]) -> PendingSnapshot:
    await deps.ready()
    assert deps.db is not None
    records = await deps.db.pool.fetch(_PENDING_SQL, ids)
    by_site = {r["site_id"]: r["n"] for r in records if r["id"] is None}
    return PendingSnapshot(by_site, {r["id"] for r in records if r["id"] is not None})


gauge = PendingGauge(fetch_pending, refresh_seconds=settings.intake_pending_refresh_seconds)


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


class BurstGC:
    """Holds the automatic garbage collector off while a burst of submissions is in flight.

    A young-generation pass walks every object alive at that moment. During a burst
    that is mostly the thousands of requests being answered, which die a moment
    later anyway: about a tenth of a 5,000-request burst's CPU went to those walks.
    So while at least `high` submissions are in flight, automatic collection is off.
    It comes back as soon as at most `low` are, and after `max_seconds` at the
    latest; after such a forced return it stays on for `max_seconds`, so sustained
    overload cannot keep it off (cyclic garbage waits a few seconds at most).
    Reference counting, which frees almost everything, is never affected.
    """

    def __init__(self, *, high: int = 1000, low: int = 10, max_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.high, self.low, self.max_seconds = high, low, max_seconds
        self._clock = clock
        self.in_flight = 0
        self._paused_at: float | None = None
        self._not_before = float("-inf")

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def begin(self) -> None:
        self.in_flight += 1
        if self._paused_at is None:
            if self.in_flight >= self.high and gc.isenabled():
                now = self._clock()
                if now >= self._not_before:
                    gc.disable()
                    self._paused_at = now
        elif self._clock() - self._paused_at > self.max_seconds:
            self._resume(forced=True)

    def end(self) -> None:
        self.in_flight -= 1
        if self._paused_at is not None:
            if self.in_flight <= self.low:
                self._resume(forced=False)
            elif self._clock() - self._paused_at > self.max_seconds:
                self._resume(forced=True)

    def _resume(self, *, forced: bool) -> None:
        gc.enable()
        self._paused_at = None
        if forced:
            self._not_before = self._clock() + self.max_seconds


burst_gc = BurstGC()


# --------------------------------------------------------------------------- the steps of a submission


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
        raise _unavailable("the sites registry (Postgres) could not be read") from None


def _retry_after() -> dict[str, str]:
    return {"Retry-After": str(max(1, int(settings.intake_retry_after_seconds)))}


def _unavailable(what: str) -> IntakeError:
    return IntakeError(
        503, f"nothing was accepted: {what}; retry in a moment with the same request ids",
        headers=_retry_after(),
    )


def rejection(decision: Decision) -> IntakeError:
    wait = settings.intake_retry_after_seconds
    if decision.reason == "queue_full":
        text = (f"the queue is full: {decision.pending} requests are pending and the limit is {decision.limit}; "
                f"nothing was accepted, retry after {wait} s")
    else:
        text = (f"site {decision.site_id} has {decision.pending} requests pending and its limit (max_queued) is "
                f"{decision.limit}; nothing was accepted, retry after {wait} s")
    if 0 < decision.room:
        text += f" or send at most {decision.room} now"
    return IntakeError(
        429, text, headers=_retry_after(), reason=decision.reason, pending=decision.pending,
        limit=decision.limit, site_id=decision.site_id, room=decision.room, retry_after=wait,
    )


class RequestProducer:
    """Produces the intake's records to blog.requests, many submissions per Kafka batch.

    Every submission waiting in the same turn of the event loop is written into
    one record batch per partition (aiokafka's batch API: no per-record future,
    no waiting for a full batch to drain) and sent at once; each submission's
    future is set when the broker has acked (acks=all) every batch holding one of
    its records, or fails if any of them failed or the deadline passed. The
    partition is the one `Topic.send` would pick (the producer's partitioner on
    the site id key), so a site's requests still share one partition number.
    """

    def __init__(self, topic: str, timeout: float, producer: Callable[[], Any] = lambda: app.producer) -> None:
        self.topic = topic
        self.timeout = timeout
        self._faust_producer = producer  # Faust's producer; its aiokafka one does the sending
        self._queue: list[tuple[list[tuple[bytes, bytes]], asyncio.Future]] = []
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partitions: dict[bytes, int] = {}  # key -> partition, for the partition count in `_partition_count`
        self._partition_count = 0

    def send(self, requests: list[dict[str, Any]]) -> asyncio.Future:
        """A future that is done once every record of `requests` is acked by the broker."""
        records = [(r["site_id"].encode(), encode_checked("BlogRequest", r)) for r in requests]
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()  # once: each call costs a getpid() syscall
        done = loop.create_future()
        self._queue.append((records, done))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush)
        return done

    def _flush(self) -> None:
        self._flushing = False
        queue, self._queue = self._queue, []
        asyncio.ensure_future(self._produce(queue))

    async def _produce(self, queue: list[tuple[list[tuple[bytes, bytes]], asyncio.Future]]) -> None:
        """Send, then wait for the acks; whatever is not acked by the deadline fails (the caller answers 503).

        A submission always ends with a result or an ordinary exception, never
        CancelledError, so its handler can answer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            sent = await asyncio.wait_for(self._send_batches(queue), self.timeout)
            late = [acked for acked, _ in sent]
            if late:
                _, late = await asyncio.wait(late, timeout=max(0.0, deadline - loop.time()))
        except Exception as exc:  # not all sent: every submission not answered yet fails
            self._fail((done for _, done in queue), exc)
            return
        except BaseException:  # the worker is stopping
            self._fail((done for _, done in queue), ConnectionError("the worker stopped before the broker acked"))
            raise
        # Acked batches settle their submissions in `_acked`; those in a batch still unacked fail.
        timeout = asyncio.TimeoutError(f"the broker did not acknowledge within {self.timeout:g} s")
        self._fail((done for acked, members in sent if acked in late for done in members), timeout)

    @staticmethod
    def _fail(submissions: Iterable[asyncio.Future], error: Exception) -> None:
        for done in submissions:
            if not done.done():
                done.set_exception(error)

    async def _send_batches(
        self, queue: list[tuple[list[tuple[bytes, bytes]], asyncio.Future]]
    ) -> list[tuple[asyncio.Future, set[asyncio.Future]]]:
        """One batch per partition (more if one is full), handed to the producer: (its ack, its submissions)."""
        faust_producer = self._faust_producer()
        producer = faust_producer._ensure_producer()  # the worker's aiokafka producer (acks=all)
        await producer.client._wait_on_metadata(self.topic)
        count = len(producer.client.cluster.partitions_for_topic(self.topic) or ())
        if count != self._partition_count:  # the partitioner's answers depend on it
            self._partitions, self._partition_count = {}, count
        partitions = self._partitions
        waiting: dict[asyncio.Future, int] = {}  # submission -> batches not acked yet
        by_partition: dict[int, list[tuple[bytes, bytes, asyncio.Future]]] = {}
        for records, done in queue:
            for key, value in records:
                partition = partitions.get(key)
                if partition is None:
                    partition = partitions[key] = faust_producer.key_partition(self.topic, key).partition
                by_partition.setdefault(partition, []).append((key, value, done))
        sends = []
        for partition, records in by_partition.items():
            batch, members = producer.create_batch(), set()
            for key, value, done in records:
                if batch.append(timestamp=None, key=key, value=value, headers=[]) is None:
                    if not members:
                        raise ValueError(f"a record of {len(value)} bytes does not fit in a Kafka batch")
                    sends.append((partition, batch, members))
                    batch, members = producer.create_batch(), set()
                    if batch.append(timestamp=None, key=key, value=value, headers=[]) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit in a Kafka batch")
                members.add(done)
            sends.append((partition, batch, members))
        for _, _, members in sends:
            for done in members:
                waiting[done] = waiting.get(done, 0) + 1
        acks = []
        for partition, batch, members in sends:
            batch.close()
            acked = await producer.send_batch(batch, self.topic, partition=partition)
            acked.add_done_callback(lambda f, members=members: self._acked(f, members, waiting))
            acks.append((acked, members))
        return acks

    @staticmethod
    def _acked(acked: asyncio.Future, members: set[asyncio.Future], waiting: dict[asyncio.Future, int]) -> None:
        error = acked.exception() if not acked.cancelled() else ConnectionError("the send was cancelled")
        for done in members:
            if done.done():
                continue
            if error is not None:
                done.set_exception(error)
                continue
            waiting[done] -= 1
            if waiting[done] == 0:
                done.set_result(None)


_producer: RequestProducer | None = None


async def produce(requests: list[dict[str, Any]], timeout: float) -> None:
    """Every request (complete records from `check_items`) to blog.requests, keyed by site;
    returns once the broker acked them all, raises if it did not within `timeout`."""
    global _producer
    if _producer is None or _producer.timeout != timeout:
        _producer = RequestProducer(requests_topic.get_topic_name(), timeout)
    await _producer.send(requests)


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
            raise _unavailable("the number of pending requests could not be read (is Postgres up?)") from None
    if (pending := gauge.total()) >= settings.queue_size_limit:
        raise rejection(Decision(False, "queue_full", pending, settings.queue_size_limit))
    items, batch = parse_body(raw, max_batch=settings.intake_max_batch)
    requests, errors = check_items(items, batch=batch)
    sites = await registered_sites(requests)
    errors += unknown_site_errors(requests, {s: site is not None for s, site in sites.items()}, batch=batch)
    if errors:
        raise invalid(sorted(errors, key=lambda e: e.item))
    limits = {site_id: site.max_queued for site_id, site in sites.items()}
    decision = gauge.admit(requests, limit=settings.queue_size_limit, site_limits=limits)
    if not decision.ok:
        raise rejection(decision)
    produced = False
    try:
        await produce(requests, settings.intake_produce_timeout)
        produced = True
    except Exception as exc:
        log.warning("intake: producing %d request(s) failed: %s", len(requests), type(exc).__name__)
        raise _unavailable("Kafka did not confirm the request(s)") from None
    finally:
        gauge.settle(requests, produced=produced)
    return requests, batch


# --------------------------------------------------------------------------- HTTP views

_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


class _IntakeView(View):
    def answer(self, body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return self.json(body, status=status, headers={**_SECURITY_HEADERS, **(headers or {})})

    def failure(self, exc: IntakeError) -> Response:
        return self.answer(exc.body(), exc.status, exc.headers)

    def unauthorized(self, request: Request) -> Response | None:
        if bearer_ok(request.headers.get("Authorization"), settings.intake_token):
            return None
        return self.answer(
            {"error": "missing or wrong intake token: send the header Authorization: Bearer <token>"},
            401, {"WWW-Authenticate": 'Bearer realm="blogstream"'},
        )


_JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8", **_SECURITY_HEADERS}
_UNAUTHORIZED = {"error": "missing or wrong intake token: send the header Authorization: Bearer <token>"}


_compact_json = json.JSONEncoder(separators=(",", ":")).encode


def _json_response(body: Any, status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    """The same answer as `View.json` (`_IntakeView.answer`), built without Faust's view layer."""
    return web.Response(
        body=_compact_json(body).encode(), status=status,
        headers={**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS,
    )


async def post_blogs(request: web.Request) -> web.Response:
    """POST /api/blogs: one request or a batch; 202 once the broker acked every record.

    A plain aiohttp handler rather than a Faust `View`: this is the one path that
    takes thousands of requests per second, and Faust's view dispatch and web
    sensors (a Prometheus histogram and counter per request) were about a tenth
    of its CPU. The intake's own answer is the same.
    """
    if not bearer_ok(request.headers.get("Authorization"), settings.intake_token):
        return _json_response(_UNAUTHORIZED, 401, {"WWW-Authenticate": 'Bearer realm="blogstream"'})
    burst_gc.begin()
    try:
        raw = await read_body(request, settings.intake_max_body_bytes)
        requests, batch = await submit(raw)
    except IntakeError as exc:
        burst_gc.end()
        if exc.status == 429:
            await asyncio.sleep(REFUSAL_PAUSE_SECONDS)
        return _json_response(exc.body(), exc.status, exc.headers)
    except BaseException:
        burst_gc.end()
        raise
    burst_gc.end()
    ids = [r["request_id"] for r in requests]
    if batch:
        return _json_response({"accepted": len(ids), "request_ids": ids}, 202)
    return _json_response({"accepted": 1, "request_ids": ids, "request_id": ids[0]}, 202,
                          {"Location": f"/api/blogs/{ids[0]}"})


app.web.web_app.router.add_post("/api/blogs", post_blogs)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def public_row(row: Mapping[str, Any], *, full: bool = True) -> dict[str, Any]:
    """A blog_generations row as the API shows it (no internals, no secrets)."""
    out: dict[str, Any] = {
        "request_id": row["id"],
        "site_id": row["site_id"],
        "status": row["status"],
        "stage": row["stage"],
        "title": row.get("title"),
        "post_id": row.get("post_id"),
        "post_url": row.get("post_url"),
        "error": row.get("error"),
        "created_at": _iso(row.get("created_at")),
        "finished_at": _iso(row.get("finished_at")),
    }
    if not full:
        return out
    history = [{"stage": "requested", "at": _iso(row.get("created_at"))}]
    for stage, column in (("drafted", "drafted_at"), ("illustrated", "illustrated_at")):
        if row.get(column) is not None:
            history.append({"stage": stage, "at": _iso(row[column])})
    if row["status"] != "PENDING" and row.get("finished_at") is not None:
        history.append({"stage": row["stage"], "at": _iso(row["finished_at"])})
    out.update(
        image_url=row.get("image_url"),
        attempts=row.get("attempts"),
        prompt_tokens=row.get("prompt_tokens"),
        completion_tokens=row.get("completion_tokens"),
        updated_at=_iso(row.get("updated_at")),
        request=row.get("request"),
        history=history,
    )
    return out


@app.page("/api/blogs/{request_id}")
class Blog(_IntakeView):
    async def get(self, request: Request, request_id: str) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        if not _ID.fullmatch(request_id):
            return self.answer({"error": "request_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -"}, 400)
        try:
            await deps.ready()
            assert deps.db is not None
            row = await deps.db.get_generation(request_id)
        except Exception:
            log.warning("intake: reading request %s failed", request_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read; retry in a moment", headers=_retry_after()))
        if row is None:
            return self.answer(
                {"error": f"no request {request_id} is known (yet): an accepted request shows up here "
                          "within about a second"},
                404,
            )
        return self.answer(public_row(row))


async def retry_failed(request_id: str) -> tuple[int, dict[str, Any]]:
    """Send a FAILED request through the pipeline again; (HTTP status, answer).

    Effects that already happened (an article written, an image made) are
    reused from the effect ledger, so a retry pays only for what failed.
    """
    await deps.ready()
    assert deps.db is not None
    row = await deps.db.get_generation(request_id)
    if row is None:
        return 404, {"error": f"no request {request_id} is known"}
    if row["status"] != "FAILED":
        return 409, {"error": f"request {request_id} is {row['status']}, only FAILED requests can be retried",
                     "status": row["status"]}
    reopened = await deps.db.reopen_failed(request_id)
    if reopened is None:
        return 409, {"error": f"request {request_id} has no stored request to send again (it was never a valid "
                              "request); submit it again with all its fields"}
    stored, error = reopened
    request, problems = check_request(stored)
    if request is None:
        await deps.db.restore_failed(request_id, error)
        wrong = "; ".join(str(p) for p in problems)
        return 409, {"error": f"request {request_id}'s stored request is no longer valid ({wrong}); submit it again"}
    try:
        await produce([request], settings.intake_produce_timeout)
    except Exception as exc:
        await deps.db.restore_failed(request_id, error)
        return 503, {"error": f"Kafka did not take the retry of {request_id} ({type(exc).__name__}); try again"}
    return 202, {"request_id": request_id, "status": "PENDING", "previous_error": error}


@app.page("/api/blogs/{request_id}/retry")
class RetryRequest(_IntakeView):
    async def post(self, request: Request, request_id: str) -> Response:
        if (denied := self.unauthorized(request)) is not None:  # it creates work, as a submit does
            return denied
        status, body = await retry_failed(request_id)
        return self.answer(body, status)


@app.page("/api/sites/{site_id}/blogs")
class SiteBlogs(_IntakeView):
    async def get(self, request: Request, site_id: str) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        problems = []
        if not _ID.fullmatch(site_id):
            problems.append("site_id: must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        raw_limit = request.query.get("limit", str(DEFAULT_PAGE))
        limit = int(raw_limit) if re.fullmatch(r"[0-9]{1,6}", raw_limit) else 0
        if not 1 <= limit <= MAX_PAGE:
            problems.append(f"limit: must be a whole number from 1 to {MAX_PAGE}")
        after = request.query.get("after") or None
        if after is not None and not _ID.fullmatch(after):
            problems.append("after: must be a request id (the last request_id of the previous page)")
        if problems:
            return self.answer({"error": "; ".join(problems)}, 400)
        try:
            await deps.ready()
            assert deps.db is not None
            rows = await deps.db.list_site_generations(site_id, limit=limit, after_id=after)
        except Exception:
            log.warning("intake: listing site %s failed", site_id, exc_info=True)
            return self.failure(IntakeError(503, "the database could not be read; retry in a moment", headers=_retry_after()))
        items = [public_row(r, full=False) for r in rows]
        next_after = items[-1]["request_id"] if len(items) == limit else None
        return self.answer({"site_id": site_id, "items": items, "next_after": next_after})


@app.page("/api/intake")
class IntakeState(_IntakeView):
    async def get(self, request: Request) -> Response:
        if (denied := self.unauthorized(request)) is not None:
            return denied
        try:
            await gauge.fresh()
        except QueueUnknown:
            return self.failure(_unavailable("the number of pending requests could not be read"))
        return self.answer(
            {
                **gauge.figures(),
                "queue_size_limit": settings.queue_size_limit,
                "max_batch": settings.intake_max_batch,
                "max_body_bytes": settings.intake_max_body_bytes,
                "auth": bool(settings.intake_token),
            }
        )
