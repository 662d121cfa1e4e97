"""The sink: every stage's output becomes a row in Postgres `blog_generations`.

One agent reads all four stage topics in batches (`take_events`) and upserts
them by request id in one round trip. Statuses only move forward (the
connector's rank rule), so replays after a crash never turn DONE back into
PENDING. Faust acks a batch when the loop body returns — even when it raises —
so a failed write is retried here until it succeeds, never skipped.

A final outcome also frees the request's in-flight slot in the limiter; the
release is idempotent, so replaying a result is harmless.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone


from store.outcomes import OutcomeRow
from streams import metrics
from streams.app import app, drafts_topic, illustrated_topic, requests_topic, results_topic
from streams.pipeline.deps import deps
from streams.limiter.client import budgets
from streams.contract import RecordError, decode, decode_request
from streams.settings import settings

log = logging.getLogger(__name__)

_FINAL_STAGE = {"DONE": "published", "FAILED": "failed", "CANCELLED": "cancelled"}


def _at(ms: int | None) -> datetime:
    if not ms:
        return datetime.now(timezone.utc)
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def outcome_row(topic: str, data: bytes) -> OutcomeRow | None:
    """The row a stage event means; None for bytes the stages dead-letter."""
    try:
        if topic == requests_topic.get_topic_name():
            request = decode_request(data)
            return OutcomeRow(
                request["request_id"], request["site_id"], "PENDING", "requested", 0,
                _at(request.get("requested_at")), request=request,
            )
        if topic == drafts_topic.get_topic_name():
            draft = decode("BlogDraft", data)
            request, usage = draft["request"], draft["usage"]
            return OutcomeRow(
                request["request_id"], request["site_id"], "PENDING", "drafted", 1, _at(draft["drafted_at"]),
                request=request, title=draft["article"]["title"], attempts=draft.get("attempts"),
                prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            )
        if topic == illustrated_topic.get_topic_name():
            done = decode("BlogIllustrated", data)
            request = done["request"]
            return OutcomeRow(
                request["request_id"], request["site_id"], "PENDING", "illustrated", 2, _at(done["illustrated_at"]),
                request=request, title=done["article"]["title"], image_url=done["image"]["url"],
            )
        result = decode("BlogResult", data)
        usage = result.get("usage") or {}
        return OutcomeRow(
            result["request_id"], result["site_id"], result["status"], _FINAL_STAGE[result["status"]], 3,
            _at(result["finished_at"]), title=result.get("title"), post_id=result.get("post_id"),
            post_url=result.get("post_url"), error=result.get("error"), attempts=result.get("attempts"),
            prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
        )
    except RecordError:
        return None


async def write_outcomes(rows: list[OutcomeRow]) -> None:
    """Upsert a batch, retrying until Postgres takes it (nothing may be dropped)."""
    await deps.ready()
    assert deps.db is not None
    delay = 0.5
    while True:
        try:
            await deps.db.upsert_outcomes(rows)
            metrics.sink_rows.inc(len(rows))
            return
        except Exception:
            log.warning("sink: writing %d outcomes failed, retrying in %.1fs", len(rows), delay, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


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
    async for events in stream.take_events(settings.sink_batch_size, within=settings.sink_batch_seconds):
        rows = [row for e in events if (row := outcome_row(e.message.topic, e.value)) is not None]
        if rows:
            await write_outcomes(rows)
        for row in rows:
            if row.stage_rank == 3:
                await budgets.release_slot(row.site_id, row.request_id)
