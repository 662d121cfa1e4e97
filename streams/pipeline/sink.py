"""The sink: every stage's output becomes a row in Postgres `blog_generations`.

One agent reads all four stage topics in batches and upserts them by request id
in one round trip. Statuses only move forward (the connector's rank rule), so
replays after a crash never turn DONE back into PENDING.

Nothing one event does may stop or lose another:
- Events are acked only after their batch is written (`noack_take`; Faust's
  `take_events` acks a batch when the loop body ends, even when it raised or was
  cancelled). An outage (Postgres down at start or later, a lost connection, a
  timeout) is retried with backoff until it passes, `deps.ready()` included.
- When Postgres refuses a batch for its values (a data error: bad text, a value
  out of range, a failed check), the batch is written event by event: the one
  that is refused goes to blog.dlq with the reason, its request is marked
  FAILED, and every other event is written.
- An event the sink cannot even turn into a row (a time out of range, a
  result record that is not valid) is dead-lettered the same way.
- An event whose request id belongs to another site writes nothing (the SQL
  refuses it); results are dead-lettered here, stage records by the stage that
  reads them (factory.py), so a bad record lands in blog.dlq once.

A final outcome also frees the in-flight slot of the run it ends (`slot_key`:
each run of a request, the first and each `blogstream retry`, holds its own); the
release is idempotent, so replaying a result is harmless, and an old run's result
read again while a retry runs frees only the old run's slot. Every event carries
its run (`retry`), and the row follows the latest (store/outcomes.py).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from store.outcomes import OutcomeRow, OutcomeWrite
from streams import metrics
from streams.app import app, drafts_topic, illustrated_topic, requests_topic, results_topic
from streams.contract import RecordError, clean_text, decode, decode_request, key_problem, time_problem
from streams.limiter.client import budgets
from streams.pipeline.deps import deps
from streams.pipeline.factory import dead_letter, is_data_error, is_transient
from streams.pipeline.stage import slot_key
from streams.settings import settings

log = logging.getLogger(__name__)

STAGE = "sink"
_FINAL_STAGE = {"DONE": "published", "FAILED": "failed", "CANCELLED": "cancelled"}
FIRST_RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 10.0


class Unstorable(RecordError):
    """An event that decodes but cannot become a row (a reason for blog.dlq)."""


def _at(ms: int | None) -> datetime:
    if not ms:
        return datetime.now(timezone.utc)
    if problem := time_problem(ms):  # a datetime could not even hold some of these (year 146 million)
        raise Unstorable(f"a time of {ms} ms {problem}")
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def outcome_row(topic: str, data: bytes, key: bytes | None = None) -> OutcomeRow | None:
    """The row a stage event means; None for records the stage reading that topic dead-letters.

    Raises RecordError for a result that is not valid (no stage reads results, so
    the sink dead-letters those) and Unstorable for an event of any topic that
    decodes but cannot be stored (both with the ids when they could be read).
    """
    results = topic == results_topic.get_topic_name()
    try:
        if topic == requests_topic.get_topic_name():
            value = decode_request(data)
        else:
            value = decode(_RECORDS.get(topic, "BlogResult"), data)
    except RecordError:
        if results:
            raise
        return None
    request = value.get("request", value)
    ids = {"request_id": request["request_id"], "site_id": request["site_id"]}
    if problem := key_problem(key, ids["site_id"]):
        if results:
            raise RecordError(problem, **ids)
        return None
    try:
        return _row(topic, value)
    except Exception as exc:  # Unstorable, or anything unforeseen about one event
        raise Unstorable(str(exc) if isinstance(exc, Unstorable) else f"{type(exc).__name__}: {exc}", **ids) from exc


def _row(topic: str, value: dict[str, Any]) -> OutcomeRow:
    if topic == requests_topic.get_topic_name():
        return OutcomeRow(
            value["request_id"], value["site_id"], "PENDING", "requested", 0, _at(value.get("requested_at")),
            request=value, retry=value.get("retry", 0),
        )
    request = value.get("request", value)
    run = request.get("retry", 0)
    if topic == drafts_topic.get_topic_name():
        usage = value["usage"]
        return OutcomeRow(
            request["request_id"], request["site_id"], "PENDING", "drafted", 1, _at(value["drafted_at"]),
            request=request, title=value["article"]["title"], attempts=value.get("attempts"),
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"], retry=run,
        )
    if topic == illustrated_topic.get_topic_name():
        return OutcomeRow(
            request["request_id"], request["site_id"], "PENDING", "illustrated", 2, _at(value["illustrated_at"]),
            request=request, title=value["article"]["title"], image_url=value["image"]["url"], retry=run,
        )
    usage = value.get("usage") or {}
    return OutcomeRow(
        value["request_id"], value["site_id"], value["status"], _FINAL_STAGE[value["status"]], 3,
        _at(value["finished_at"]), title=value.get("title"), post_id=value.get("post_id"),
        post_url=value.get("post_url"), error=value.get("error"), attempts=value.get("attempts"),
        prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"), retry=run,
    )


async def _until_done(what: str, action: Any, *, outages_only: bool = False) -> Any:
    """`await action()` until it stops failing; a data error (`is_data_error`) is raised at once.

    Outages are waited out with backoff. Anything else (a bug, a changed schema) is
    retried too, logged as an error: dropping events for it could lose every one
    (with `outages_only` it is raised instead).
    """
    delay = FIRST_RETRY_DELAY
    while True:
        try:
            return await action()
        except Exception as exc:
            if is_data_error(exc) or (outages_only and not is_transient(exc)):
                raise
            outage = is_transient(exc)
            log.log(logging.WARNING if outage else logging.ERROR, "sink: %s failed (%s), retrying in %.1fs",
                    what, type(exc).__name__, delay, exc_info=not outage)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)


async def _store(rows: list[OutcomeRow]) -> OutcomeWrite:
    await deps.ready()  # inside the retry: Postgres down at start must not drop a batch
    assert deps.db is not None
    return await deps.db.store_outcomes(rows)


Pair = tuple[Any, OutcomeRow]


async def write_outcomes(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """Store the rows of a batch: (stored, foreign: the request id belongs to another site).

    When Postgres refuses the batch for its values, it is written event by event;
    the events it refuses then are dead-lettered, their requests marked FAILED, and
    are in neither list.
    """
    rows = [row for _, row in pairs]
    try:
        report = await _until_done(f"writing {len(rows)} outcomes", lambda: _store(rows))
    except Exception as exc:
        log.warning("sink: Postgres refused a batch of %d (%s); writing it event by event", len(rows), type(exc).__name__)
        stored: list[Pair] = []
        foreign: list[Pair] = []
        for event, row in pairs:
            try:
                one = await _until_done(f"writing request {row.request_id}", lambda row=row: _store([row]))
            except Exception as refused:
                await _refused_by_postgres(event, row, f"{type(refused).__name__}: {refused}")
                continue
            (foreign if one.foreign else stored).append((event, row))
        metrics.sink_rows.inc(len(stored))
        return stored, foreign
    foreign = [(event, row) for event, row in pairs if (row.request_id, row.site_id) in report.foreign]
    metrics.sink_rows.inc(len(rows) - len(foreign))
    return [pair for pair in pairs if pair not in foreign], foreign


async def _refused_by_postgres(event: Any, row: OutcomeRow, reason: str) -> None:
    """An event Postgres will never take: to blog.dlq with the reason, and its request FAILED."""
    message = event.message
    where = f"{message.topic}/{message.partition}/{message.offset}"
    log.warning("sink: Postgres refused event %s of request %s: dead-lettered (%s)", where, row.request_id, reason)
    reason = f"Postgres refused it: {reason}"
    await _dead_letter(event, RecordError(reason), mark_failed=False)
    failed = OutcomeRow(
        row.request_id, row.site_id, "FAILED", "failed", 3, datetime.now(timezone.utc),
        error=clean_text(
            f"sink could not store an event of request {row.request_id} on site {row.site_id} ({where}, now in "
            f"blog.dlq): {reason}. Fix the cause, then: blogstream retry {row.request_id}", 2000,
        ),
        retry=row.retry,  # the refused event's run: it ends that run, not a later one
    )
    try:
        await _until_done(f"marking {row.request_id} FAILED", lambda: _store([failed]))
    except Exception:
        log.exception("sink: could not mark %s FAILED either", row.request_id)
        return
    await _release(failed)


async def _dead_letter(event: Any, err: RecordError, *, mark_failed: bool = True) -> None:
    """`dead_letter` through outages; should even its FAILED row be refused, that is logged, not raised."""
    try:
        await _until_done("dead-lettering an event", lambda: dead_letter(STAGE, event, err, mark_failed=mark_failed))
    except Exception:
        log.exception("sink: dead-lettering %s failed", err.request_id or "an event")


async def _release(row: OutcomeRow) -> None:
    """Free the in-flight slot of the run a final event ends; only an outage is worth holding the batch for."""
    slot = slot_key(row.request_id, row.retry)
    try:
        await _until_done("releasing a slot", lambda: budgets.release_slot(row.site_id, slot), outages_only=True)
    except Exception:
        log.exception("sink: could not release the slot of %s", slot)


async def store_batch(events: list[Any]) -> None:
    """Every event of a batch stored, dead-lettered, or left to the stage that reads it; returns only then.

    It does not raise for an event's sake: outages are waited out, bad events set aside.
    """
    pairs: list[Pair] = []
    for event in events:
        message = event.message
        try:
            row = outcome_row(message.topic, event.value, message.key)
        except RecordError as err:  # a result that is not valid, or an event that cannot be a row
            await _dead_letter(event, err)
            continue
        if row is not None:
            pairs.append((event, row))
    if not pairs:
        return
    stored, foreign = await write_outcomes(pairs)
    for event, row in foreign:
        if event.message.topic == results_topic.get_topic_name():  # no stage reads results: it is ours to report
            reason = f"request id {row.request_id} belongs to another site; this result for site {row.site_id} was not stored"
            await _dead_letter(event, RecordError(reason), mark_failed=False)
    # Together: the releases of a batch reach the coordinator as one record (client.CastBatch).
    await asyncio.gather(*(_release(row) for _, row in stored if row.stage_rank == 3))


_RECORDS = {
    drafts_topic.get_topic_name(): "BlogDraft",
    illustrated_topic.get_topic_name(): "BlogIllustrated",
}


outcome_topics = app.topic(
    requests_topic.get_topic_name(),
    drafts_topic.get_topic_name(),
    illustrated_topic.get_topic_name(),
    results_topic.get_topic_name(),
    key_serializer="raw",
    value_serializer="raw",
)


@app.agent(outcome_topics)
async def record_outcomes(stream):
    # noack_take, not take_events: these events are acked here, after store_batch
    # wrote them. If it is cancelled or raises, they stay unacked and are read again.
    async for events in stream.noack_take(settings.sink_batch_size, within=settings.sink_batch_seconds):
        await store_batch(events)
        for event in events:
            await stream.ack(event)
