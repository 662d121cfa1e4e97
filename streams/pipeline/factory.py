"""One place turns a stage's step into a Faust agent: decode -> step -> next topic.

    build_stage("generate", source=requests_topic, decode=decode_request,
                step=write_draft, next_topic=drafts_topic, next_record="BlogDraft")

The agent hands its events to a `StageRunner` (runner.py: concurrent, fair
across sites, acked in offset order). For each event: bad bytes go to the
dead-letter topic with the reason (and a FAILED result when a request id can
be read), the step runs, and its record is produced to the next topic; the
broker's ack comes before the event may be acked. `StageFailed` and
`StageCancelled` become a FAILED or CANCELLED result instead.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from streams import metrics
from streams.app import app, dlq_topic, expected_start, results_topic
from streams.contract import RecordError, encode
from streams.pipeline.deps import Deps, deps
from streams.pipeline.runner import StageRunner
from streams.pipeline.stage import StageCancelled, StageFailed, now_ms
from streams.settings import settings

log = logging.getLogger(__name__)

Step = Callable[[dict[str, Any], Deps], Awaitable[dict[str, Any]]]


async def _read_again(tp: Any, offset: int) -> None:
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


async def send_record(topic: Any, site_id: str, record_name: str, value: dict, headers: dict | None = None) -> None:
    """Produce and wait for the broker's ack: only then may the source event be acked."""
    fut = await topic.send(key=site_id.encode(), value=encode(record_name, value), headers=headers)
    await fut


async def send_failed(
    stage: str, request_id: str, site_id: str, error: str, attempts: int = 0, *, status: str = "FAILED"
) -> None:
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
            "error": error[:2000],
            "attempts": attempts,
            "usage": None,
            "finished_at": now_ms(),
        },
    )
    metrics.stage_events.labels(stage, status.lower()).inc()


async def dead_letter(stage: str, event: Any, err: RecordError) -> None:
    """Bytes that are not a valid record: keep them, say why, carry on."""
    message = event.message
    headers = {
        "blogstream-error": err.reason.encode()[:1000],
        "blogstream-stage": stage.encode(),
        "blogstream-source": f"{message.topic}/{message.partition}/{message.offset}".encode(),
    }
    key = message.key if isinstance(message.key, bytes) else (message.key or "").encode()
    fut = await dlq_topic.send(key=key, value=message.value if isinstance(message.value, bytes) else b"", headers=headers)
    await fut
    metrics.stage_events.labels(stage, "dead_letter").inc()
    if err.request_id:
        site_id = err.site_id or key.decode("utf-8", "replace") or "unknown"
        await send_failed(stage, err.request_id, site_id, f"invalid {stage} input: {err.reason}")


async def run_stage_event(
    stage: str,
    event: Any,
    decode: Callable[[bytes], dict],
    step: Callable[[dict], Awaitable[tuple[Any, str, dict] | None]],
) -> None:
    """Decode → step → produce. `step` returns (topic, record name, record) or None."""
    try:
        record = decode(event.value)
    except RecordError as err:
        await dead_letter(stage, event, err)
        return
    request = record.get("request", record)
    request_id, site_id = request["request_id"], request["site_id"]
    try:
        out = await step(record)
    except StageFailed as failed:
        log.warning("%s", failed.message)
        await send_failed(stage, request_id, site_id, failed.message, record.get("attempts", 0))
        return
    except StageCancelled as cancelled:
        await send_failed(stage, request_id, site_id, cancelled.reason, status="CANCELLED")
        return
    if out is not None:
        topic, name, value = out
        await send_record(topic, site_id, name, value)
    metrics.stage_events.labels(stage, "ok").inc()


def build_stage(
    name: str, *, source: Any, decode: Callable[[bytes], dict], step: Step, next_topic: Any, next_record: str
) -> StageRunner:
    """Register the agent of one stage on `source`; returns its runner (queue figures, tests)."""

    async def run_step(record: dict[str, Any]) -> tuple[Any, str, dict]:
        await deps.ready()
        return next_topic, next_record, await step(record, deps)

    async def handle(event: Any) -> None:
        await run_stage_event(name, event, decode, run_step)

    runner = StageRunner(
        name, handle, concurrency=settings.stage_concurrency, read_ahead=settings.read_ahead, policy=deps.policy,
        topic=source.get_topic_name(),
    )
    # A runner that sees a partition's events skip an offset, or stall with
    # records waiting, reads it again from its next offset (Faust's consumer).
    runner.expected_start = expected_start
    runner.rewind = _read_again
    runner.assigned_partitions = _assigned
    runner.end_offset = _end_of

    async def consume(stream: Any) -> None:
        await runner.consume(stream)

    app.agent(source, name=f"streams.pipeline.{name}")(consume)
    return runner
