"""One place turns a stage's step into a Faust agent: decode -> step -> next topic.

    build_stage("generate", source=requests_topic, decode=decode_request,
                step=write_draft, next_topic=drafts_topic, next_record="BlogDraft")

The agent hands its events to a `StageRunner` (runner.py: concurrent, fair
across sites, acked in offset order). For each event: bad bytes go to the
dead-letter topic with the reason (and a FAILED row when a request id can be
read), the step runs, and its record is produced to the next topic; the
broker's ack comes before the event may be acked. `StageFailed` and
`StageCancelled` become a FAILED or CANCELLED result instead.

No record may hold up or lose another one:
- a record whose request id belongs to another site is dead-lettered and
  touches nothing of that site (`request_owner`, the effect ledger);
- a step that keeps raising something that is not an outage (a bug, a record
  it cannot handle) ends its request FAILED after `MAX_STEP_ATTEMPTS`, with the
  reason and `blogstream retry <id>`; an outage (`is_transient`: Kafka or
  Postgres unreachable, a timeout) is retried with backoff for as long as it lasts.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import asyncpg
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError
from faust.exceptions import ProducerSendError

from store.database import DatabaseError
from streams import faust_fixes, metrics
from streams.app import FIRST_AT_STOP, app, dlq_topic, expected_start, results_topic
from streams.contract import RecordError, clean_text, encode, key_problem, time_problem
from streams.contract.errors import readable_id
from streams.contract.requests import priority_headers
from streams.pipeline.deps import Deps, deps
from streams.pipeline.parking import to_tail
from streams.pipeline.passed_on import PASSED_ON
from streams.pipeline.runner import SiteHeld, StageRunner, WorkerStopping
from streams.pipeline.stage import STOPPING, RequestOfAnotherSite, StageCancelled, StageFailed, now_ms
from streams.settings import settings

log = logging.getLogger(__name__)

Step = Callable[[dict[str, Any], Deps], Awaitable[dict[str, Any] | None]]  # None: nothing to produce (yet)

MAX_STEP_ATTEMPTS = 4  # tries of a step that raises something other than an outage (the runner waits 2, 4, 8 s)
_step_failures: dict[tuple[str, int, int], int] = {}  # (topic, partition, offset) -> failed tries so far

# Infrastructure that comes back by itself: retried, with backoff, for as long as it takes.
_TRANSIENT = (
    OSError, asyncio.TimeoutError, TimeoutError, KafkaError, ProducerSendError, DatabaseError,
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.TransactionRollbackError,
)
_NEVER_FITS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# What Postgres refuses because of the values themselves (bad text, out of range, a check).
_DATA = (
    asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.exceptions.ProgramLimitExceededError,
    UnicodeError,
)


def is_transient(exc: BaseException) -> bool:
    """An outage (Kafka, Postgres, the network, a timeout): retry it, it is nobody's data."""
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, _NEVER_FITS)


def is_data_error(exc: BaseException) -> bool:
    """Postgres (or the driver) refused the values: retrying the same row can never succeed."""
    return isinstance(exc, _DATA)


async def _read_again(tp: Any, offset: int) -> None:
    log.info("reading %s again from %d; the consumer held: %s", tp, offset, faust_fixes.partition_view(app, tp))
    await app.consumer.seek(tp, offset)


def _assigned() -> Any:
    return app.consumer.assignment()


def _end_of(tp: Any) -> int | None:
    try:
        return app.consumer.highwater(tp)
    except Exception:  # not assigned any more (a rebalance is on), or not fetched yet
        return None




@app.on_partitions_revoked.connect
async def _forget_revoked(app_: Any, revoked: Any, **kwargs: Any) -> None:
    """Partitions leaving this worker: its runners drop what they have not started.

    Faust replays the partitions from the committed offset to whoever gets them
    (possibly us again); leftovers from before would break the in-order acking.
    """
    for runner in StageRunner.instances:
        runner.forget(set(revoked))
    PASSED_ON.forget({tp.partition for tp in revoked})
    gone = {(tp.topic, tp.partition) for tp in revoked}
    for position in [p for p in _step_failures if p[:2] in gone]:
        del _step_failures[position]


async def _drain_stages() -> None:
    """A stopping worker first lets its stages' provider calls in flight finish and be recorded (stage.Stopping)."""
    await STOPPING.drain(settings.stop_drain_seconds)


FIRST_AT_STOP.append(_drain_stages)


async def send_record(topic: Any, site_id: str, record_name: str, value: dict, headers: dict | None = None) -> None:
    """Produce and wait for the broker's ack: only then may the source event be acked."""
    lane = priority_headers(value.get("request", value))
    if lane:
        headers = {**(headers or {}), **dict(lane)}
    fut = await topic.send(key=site_id.encode(), value=encode(record_name, value), headers=headers)
    await fut
    if record_name == "BlogResult":  # the request's end: its slot is freed (the sink)
        PASSED_ON.end(value["request_id"])


async def send_failed(
    stage: str, request_id: str, site_id: str, error: str, attempts: int = 0, *, status: str = "FAILED", retry: int = 0
) -> None:
    """A FAILED (or CANCELLED) result of the request's run `retry` (BlogRequest.retry) on blog.results."""
    await send_record(
        results_topic,
        site_id,
        "BlogResult",
        {
            "request_id": request_id,
            "site_id": site_id,
            "status": status,
            "stage": stage,
            "post_id": None,
            "post_url": None,
            "title": None,
            "error": clean_text(error, 2000),  # it may quote a provider: keep it storable
            "attempts": attempts,
            "usage": None,
            "finished_at": now_ms(),
            "retry": retry,
        },
    )
    metrics.stage_events.labels(stage, status.lower()).inc()


async def dead_letter(stage: str, event: Any, err: RecordError, *, mark_failed: bool = True) -> None:
    """Bytes that are not a valid record: keep them, say why, carry on.

    With `mark_failed`, a request id that can be read gets a FAILED row, but only
    if it has none yet: refused input never changes an existing request (of its
    own site or another's).
    """
    message = event.message
    reason = clean_text(err.reason, 1000)
    source = f"{message.topic}/{message.partition}/{message.offset}"
    headers = {
        "blogstream-error": reason.encode()[:1000],
        "blogstream-stage": stage.encode(),
        "blogstream-source": source.encode(),
    }
    key = message.key if isinstance(message.key, bytes) else (message.key or "").encode()
    value = message.value if isinstance(message.value, bytes) else b""
    key, value = _fitting(key, value, source, headers)
    fut = await dlq_topic.send(key=key, value=value, headers=headers)
    await fut
    metrics.stage_events.labels(stage, "dead_letter").inc()
    if mark_failed and err.request_id:
        # The key names the site only when it is a well-formed id: other bytes (NUL, say, which Postgres
        # text cannot hold) made this row fail after the dead letter, and the event was tried again forever.
        site_id = err.site_id or readable_id(key.decode("utf-8", "replace")) or "unknown"
        await deps.ready()
        assert deps.db is not None
        await deps.db.record_rejected(err.request_id, site_id, f"invalid {stage} input: {reason}")


# Bytes a dead letter's own headers and the record batch's framing may take (ours are at most ~1.2 KB).
DEAD_LETTER_HEADROOM = 4096
KEPT_KEY_BYTES = 1024  # of a dead letter cut to fit: the key's first bytes, the rest for the value


def _fitting(key: bytes, value: bytes, source: str, headers: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(key, value) of a dead letter our producer can send; the headers say so when they had to be cut.

    Another producer may write records up to the broker's limit (message.max.bytes, about 1 MiB);
    ours sends at most producer_max_request_size (1,000,000 bytes), headers included. A copy of a
    record that large never fit, so the dead letter failed at every try, forever, and the partition's
    offset never passed it. The whole record stays at its source offset while the topic keeps it.
    """
    room = app.conf.producer_max_request_size - DEAD_LETTER_HEADROOM
    if len(key) + len(value) <= room:
        return key, value
    kept_key = key[:KEPT_KEY_BYTES]
    kept_value = value[: room - len(kept_key)]
    headers["blogstream-cut"] = (
        f"the record was {len(key) + len(value)} bytes (key {len(key)}, value {len(value)}), more than a dead "
        f"letter can carry: this copy has the first {len(kept_key)} bytes of its key and {len(kept_value)} of its "
        f"value; the whole record is at {source} while that topic keeps it"
    ).encode()
    return kept_key, kept_value


async def run_stage_event(
    stage: str,
    event: Any,
    decode: Callable[[bytes], dict],
    step: Callable[[dict], Awaitable[tuple[Any, str, dict] | None]],
    *,
    attempt: int = 1,
) -> None:
    """Decode → step → produce. `step` returns (topic, record name, record) or None.

    `attempt` counts the tries of this event: an exception that is not an outage
    is raised again (the runner tries later) until the last one, which ends the
    request FAILED instead.
    """
    try:
        record = decode(event.value)
    except RecordError as err:
        await dead_letter(stage, event, err)
        return
    request = record.get("request", record)
    request_id, site_id, run = request["request_id"], request["site_id"], request.get("retry", 0)
    if problem := key_problem(event.message.key, site_id):
        await dead_letter(stage, event, RecordError(problem, request_id=request_id, site_id=site_id))
        return
    try:
        out = await step(record)
        if out is not None:
            topic, name, value = out
            await send_record(topic, site_id, name, value)
    except StageFailed as failed:
        log.warning("%s", failed.message)
        await send_failed(stage, request_id, site_id, failed.message, record.get("attempts", 0), retry=run)
        return
    except StageCancelled as cancelled:
        await send_failed(stage, request_id, site_id, cancelled.reason, status="CANCELLED", retry=run)
        return
    except RequestOfAnotherSite as foreign:
        log.warning("%s: %s", stage, foreign)
        await dead_letter(stage, event, RecordError(str(foreign)), mark_failed=False)  # the row is the other site's
        return
    except RecordError as err:  # what the step made breaks the contract: making it again gives the same
        await send_failed(
            stage, request_id, site_id,
            f"{stage} failed for request {request_id} on site {site_id}: its output is not a valid record "
            f"({err.reason}). Submit it again under a new id, or once the cause is fixed: blogstream retry {request_id}",
            retry=run,
        )
        return
    except (SiteHeld, WorkerStopping):  # parked (a spend cap holds the site), or the worker stops: nothing paid
        raise
    except Exception as exc:
        if is_transient(exc) or attempt < MAX_STEP_ATTEMPTS:
            raise
        log.exception("%s: request %s failed %d times; giving up", stage, request_id, attempt)
        await send_failed(
            stage, request_id, site_id,
            f"{stage} failed for request {request_id} on site {site_id} {attempt} times: {type(exc).__name__}: "
            f"{exc}. This is not an outage (those are retried until they pass): a fault in blogstream or in this "
            f"request; once it is fixed: blogstream retry {request_id}",
            attempt,
            retry=run,
        )
        return
    metrics.stage_events.labels(stage, "ok").inc()


async def run_counted(
    stage: str, event: Any, decode: Callable[[bytes], dict], step: Callable[[dict], Awaitable[Any]]
) -> None:
    """`run_stage_event`, counting the tries of each event (the runner calls it again after a raise)."""
    message = event.message
    position = (message.topic, message.partition, message.offset)
    attempt = _step_failures.get(position, 0) + 1
    try:
        await run_stage_event(stage, event, decode, step, attempt=attempt)
    except (SiteHeld, WorkerStopping):  # not a failed try
        raise
    except Exception:
        _step_failures[position] = attempt
        raise
    _step_failures.pop(position, None)


class OwnerCache:
    """The site each recent request id belongs to, as Postgres answered it (`request_owner`).

    An id's owner never changes once its row exists (every write to
    blog_generations and stage_outputs requires the same site), so the image and
    publish stages of a request this worker has seen need no round trip to ask
    again. Bounded: the oldest answers go first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._owners: dict[str, str] = {}

    def get(self, request_id: str) -> str | None:
        return self._owners.get(request_id)

    def put(self, request_id: str, site_id: str | None) -> None:
        if site_id is None:
            return
        self._owners.pop(request_id, None)
        self._owners[request_id] = site_id
        while len(self._owners) > self.size:
            del self._owners[next(iter(self._owners))]


request_owners = OwnerCache(20_000)  # about 3 MB; more than a worker has in flight across its stages


def _event_time(ms: Any) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc) if isinstance(ms, int) and not time_problem(ms) else None


def passed_on(event: Any, record: dict[str, Any]) -> None:
    """The first stage is done with this event's request: it holds its site's slot until its result."""
    request = record.get("request", record)
    PASSED_ON.add(request["request_id"], request["site_id"], event.message.partition)


def build_stage(
    name: str, *, source: Any, decode: Callable[[bytes], dict], step: Step, next_topic: Any, next_record: str,
    takes_slot: bool = False,
) -> StageRunner:
    """Register the agent of one stage on `source`; returns its runner (queue figures, tests).

    `takes_slot`: a request takes its site's in-flight slot here and holds it until its result, so the
    site's requests past this stage count against its cap in this stage's runner (passed_on.py).
    """

    async def run_step(record: dict[str, Any]) -> tuple[Any, str, dict] | None:
        await deps.ready()
        assert deps.db is not None
        request = record.get("request", record)
        request_id, site_id = request["request_id"], request["site_id"]
        owner = request_owners.get(request_id)
        if owner is None:
            owner = await deps.db.request_owner(request_id, site_id, request=request, at=_event_time(request.get("requested_at")))
            request_owners.put(request_id, owner)
        if owner != site_id:
            raise RequestOfAnotherSite(name, request_id, site_id)
        produced = await step(record, deps)
        return None if produced is None else (next_topic, next_record, produced)  # None: nothing to produce yet

    async def handle(event: Any) -> None:
        await run_counted(name, event, decode, run_step if not takes_slot else lambda record: passing_on(event, record))

    async def passing_on(event: Any, record: dict[str, Any]) -> tuple[Any, str, dict] | None:
        out = await run_step(record)
        if out is not None:
            passed_on(event, record)
        return out

    runner = StageRunner(
        name, handle, concurrency=settings.stage_concurrency, read_ahead=settings.read_ahead,
        read_ahead_bytes=settings.read_ahead_bytes, policy=deps.policy, paused_version=deps.paused_version,
        topic=source.get_topic_name(),
    )
    # A runner that sees a partition's events skip an offset, or stall with
    # records waiting, reads it again from its next offset (Faust's consumer).
    runner.expected_start = expected_start
    runner.rewind = _read_again
    runner.assigned_partitions = _assigned
    runner.end_offset = _end_of
    runner.to_tail = to_tail  # a site at its cap gives way while the read-ahead is full (give_way.py)
    if takes_slot:
        runner.held_later = PASSED_ON.count
        PASSED_ON.on_end = runner.wake  # a request ended: its site may start another

    async def consume(stream: Any) -> None:
        await runner.consume(stream)

    app.agent(source, name=f"streams.pipeline.{name}")(consume)
    return runner
