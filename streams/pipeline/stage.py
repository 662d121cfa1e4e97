"""What the three stages share: decode, pay once, retry with the limiter, hand on.

A stage is `async def step(record, deps) -> next_record`. `run_stage_event`
wraps it for the Faust agent: it decodes the event (bad bytes go to the
dead-letter topic), runs the step, and produces the next record, awaiting the
broker's ack before the event may be acked. A step that cannot succeed raises
`StageFailed`, which becomes a FAILED outcome users can act on.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from typing import Any, Awaitable, Callable

from connectors.errors import ProviderError, RateLimited
from streams import metrics
from streams.app import app, dlq_topic, expected_start, results_topic
from streams.pipeline.deps import Deps
from streams.limiter.coordinator import budgets
from streams.contract.records import RecordError, encode
from streams.pipeline.runner import StageRunner
from streams.settings import settings

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class StageFailed(Exception):
    """A request cannot go on: says which request, which site, and what to do."""

    def __init__(self, stage: str, request_id: str, site_id: str, reason: str, action: str = "") -> None:
        self.stage, self.request_id, self.site_id = stage, request_id, site_id
        self.reason, self.action = reason, action
        super().__init__(self.message)

    @property
    def message(self) -> str:
        text = f"{self.stage} failed for request {self.request_id} on site {self.site_id}: {self.reason}"
        return f"{text}. {self.action}" if self.action else text


EFFECT_LEASE_SECONDS = 30.0  # a dead worker's claim is taken over this soon; live ones are renewed


class StageCancelled(Exception):
    """An operator cancelled the request before it started (see `blogstream sites cancel`)."""

    def __init__(self, stage: str, request_id: str, site_id: str, reason: str) -> None:
        self.stage, self.request_id, self.site_id, self.reason = stage, request_id, site_id, reason
        super().__init__(reason)


async def effect_once(
    deps: Deps, request_id: str, effect: str, site_id: str, produce: Callable[[], Awaitable[dict]]
) -> tuple[dict, bool]:
    """Run a paid or visible effect at most once per request; returns (payload, reused).

    The ledger row is claimed before the call and completed after it, so a
    replayed event (after a crash or rebalance) reuses the stored result. The
    claim is a short lease renewed while we work, so a killed worker's claim
    passes to the next one within EFFECT_LEASE_SECONDS.
    """
    assert deps.db is not None
    db = deps.db
    owner = f"{deps.worker_id}:{uuid.uuid4().hex[:8]}"
    while True:
        claim = await db.claim_effect(request_id, effect, site_id, owner=owner, lease_seconds=EFFECT_LEASE_SECONDS)
        if claim.state == "done":
            return claim.payload or {}, True
        if claim.state == "busy":  # another worker is doing it right now (rebalance overlap)
            await asyncio.sleep(1.0)
            continue
        renew = asyncio.ensure_future(_renew_lease(db, request_id, effect, owner))
        try:
            payload = await produce()
        except BaseException:
            await asyncio.shield(db.release_effect(request_id, effect, owner=owner))
            raise
        finally:
            renew.cancel()
        await db.complete_effect(request_id, effect, site_id, payload, owner=owner)
        return payload, False


async def _renew_lease(db: Any, request_id: str, effect: str, owner: str) -> None:
    while True:
        await asyncio.sleep(EFFECT_LEASE_SECONDS / 3)
        try:
            await db.extend_effect(request_id, effect, owner=owner, lease_seconds=EFFECT_LEASE_SECONDS)
        except Exception:  # a blip: the next renewal (or the lease's slack) covers it
            log.warning("could not renew the claim on %s/%s", request_id, effect, exc_info=True)


async def call_with_permits(
    *,
    stage: str,
    request_id: str,
    site_id: str,
    needs: dict[str, float],
    call: Callable[[], Awaitable[Any]],
    slot_limit: int | None = None,
    weight: float = 1.0,
    on_result: Callable[[Any, Any], Awaitable[None]] | None = None,
) -> Any:
    """The one retry loop: a fresh permit for every attempt, SDK retries are off.

    429s and `retry-after` hints go back to the limiter, which shrinks the
    shared budget; 5xx and timeouts back off exponentially; a permanent 4xx
    fails the request at once with the provider's explanation.
    """
    for attempt in range(1, settings.max_attempts + 1):
        permit = await budgets.acquire(
            site_id=site_id, request_id=request_id, needs=needs, slot_limit=slot_limit, weight=weight
        )
        if not permit.usable():
            continue
        try:
            result = await call()
        except ProviderError as exc:
            metrics.provider_calls.labels(exc.provider, type(exc).__name__).inc()
            info = exc.rate_limit
            if isinstance(exc, RateLimited) or info is not None:
                await budgets.observe(needs, info, throttled=isinstance(exc, RateLimited))
            if not exc.retryable:
                raise StageFailed(stage, request_id, site_id, str(exc), _action_for(exc, request_id)) from exc
            if attempt == settings.max_attempts:
                raise StageFailed(
                    stage, request_id, site_id, f"gave up after {attempt} attempts, last error: {exc}",
                    f"The provider kept failing; retry it later: blogstream retry {request_id}",
                ) from exc
            delay = exc.retry_after if exc.retry_after is not None else settings.retry_base_seconds * 2 ** (attempt - 1)
            await asyncio.sleep(min(60.0, delay) * random.uniform(1.0, 1.2))
            continue
        metrics.provider_calls.labels(stage, "ok").inc()
        if on_result is not None:
            await on_result(permit, result)
        return result
    raise StageFailed(stage, request_id, site_id, "no usable permit", "Check the worker's clock and load.")


def _action_for(exc: ProviderError, request_id: str) -> str:
    retry = f"blogstream retry {request_id}"
    if exc.status in (401, 403):
        return ("Check the credentials for this provider (for Wix: the site's API key and site id in the sites "
                f"table), then: {retry}")
    return f"Fix the provider settings and run {retry}, or submit a corrected request under a new id."


# --------------------------------------------------------------------------
# Event plumbing shared by the three stage agents
# --------------------------------------------------------------------------


async def _read_again(tp: Any, offset: int) -> None:
    await app.consumer.seek(tp, offset)


def _assigned() -> Any:
    return app.consumer.assignment()


def _end_of(tp: Any) -> int | None:
    try:
        return app.consumer.highwater(tp)
    except Exception:  # not assigned any more (a rebalance is on), or not fetched yet
        return None


# A runner that sees a partition's events skip an offset, or stall with records
# waiting, reads it again from its next offset.
StageRunner.expected_start = staticmethod(expected_start)
StageRunner.rewind = staticmethod(_read_again)
StageRunner.assigned_partitions = staticmethod(_assigned)
StageRunner.end_offset = staticmethod(_end_of)


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
