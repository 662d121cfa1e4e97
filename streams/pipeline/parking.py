"""The parking lot: where a paused site's stage events wait (store/parked.py), and how they come back.

The stage runner (runner.py) moves a paused site's waiting events here and
acks them; `ParkingLot.release_due` sends them back to their topics when the
site is resumed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from store.parked import ParkedEvent, ParkedEvents
from streams.contract import RecordError, decode
from streams.pipeline.runner import site_of

log = logging.getLogger(__name__)

RECORD_OF_STAGE = {"generate": "BlogRequest", "image": "BlogDraft", "publish": "BlogIllustrated"}


def raw_record(event: Any) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """A stage event's source record byte for byte: key, value, headers."""
    message = event.message
    value = message.value if isinstance(message.value, (bytes, type(None))) else event.value
    key = message.key if isinstance(message.key, (bytes, type(None))) else str(message.key).encode()
    headers = message.headers or []
    if isinstance(headers, dict):
        headers = list(headers.items())
    return key, value, [(str(k), bytes(v or b"")) for k, v in headers]


def parked_event(stage: str, event: Any) -> ParkedEvent:
    """A stage event as a parked row: its source record byte for byte, and its request id when it reads."""
    message = event.message
    key, value, headers = raw_record(event)
    try:
        record = decode(RECORD_OF_STAGE[stage], value)
        request_id: str | None = record.get("request", record)["request_id"]
    except (RecordError, KeyError, TypeError) as err:  # the stage will dead-letter it once it is back
        request_id = getattr(err, "request_id", None)
    return ParkedEvent(
        site_id=site_of(event), stage=stage, request_id=request_id, topic=message.topic, partition=message.partition,
        offset=message.offset, key=key, value=value, headers=headers,
    )


async def produce_raw(topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Awaitable[Any]:
    """Hand one record to the worker's producer; returns the broker's ack to await."""
    from streams.app import app  # the worker's producer (imported late: the runner's tests need no app)

    return await app.producer.send(topic, key, value, None, None, headers or None)


async def to_tail(events: list[Any]) -> None:
    """Produce stage events again at the end of the partitions they came from, in order, and return once the
    broker has every one: the runner then acks the originals (a site at its cap giving way, give_way.py)."""
    from streams.app import app

    acks = []
    for event in events:
        key, value, headers = raw_record(event)
        acks.append(await app.producer.send(event.message.topic, key, value, event.message.partition, None,
                                            headers or None))
    await asyncio.gather(*acks)


def run_of(event: ParkedEvent) -> int:
    """The run (BlogRequest.retry) a parked event belongs to; 0 for bytes that do not decode."""
    try:
        record = decode(RECORD_OF_STAGE[event.stage], event.value)
        return int(record.get("request", record).get("retry", 0))
    except (RecordError, KeyError, TypeError):
        return 0


async def report_cancelled(stage: str, request_id: str, site_id: str, reason: str, retry: int = 0) -> None:
    """A CANCELLED result of run `retry` on blog.results (the sink records it and frees that run's slot), acked."""
    from streams.pipeline.factory import send_failed  # the one place results are written

    await send_failed(stage, request_id, site_id, reason, status="CANCELLED", retry=retry)


class ParkingLot:
    """A worker's side of store/parked.py: park events, and send back those of resumed sites.

    `release_due()` runs after every refresh of the site controls (every 2 s,
    and at once after a change made through this worker's API): each site that
    is not paused any more gets its events produced back to their source topics
    (keyed by site, in the order they were parked), each batch deleted once the
    broker has it; cancelled events become CANCELLED results instead. Any
    worker may release any site; one at a time per site.
    """

    def __init__(
        self,
        store: ParkedEvents,
        *,
        on_unpaused: Callable[[str], None] = lambda site_id: None,
        produce: Callable[..., Awaitable[Awaitable[Any]]] = produce_raw,
        cancelled: Callable[..., Awaitable[None]] = report_cancelled,
    ) -> None:
        self.store = store
        self.on_unpaused = on_unpaused  # told when the database says a site this worker held paused is not
        self.produce = produce
        self.cancelled = cancelled
        self._releasing: asyncio.Task | None = None

    async def park(self, stage: str, events: list[Any]) -> list[bool]:
        rows = [parked_event(stage, event) for event in events]
        paused = await self.store.park(rows)
        for site_id in {row.site_id for row in rows} - paused:
            self.on_unpaused(site_id)
        return [row.site_id in paused for row in rows]

    def release_due(self) -> None:
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.ensure_future(self._release_due())

    async def _release_due(self) -> None:
        try:
            for site_id in await self.store.due():
                released = await self.store.release(site_id, self.send_back)
                if released:
                    log.info("site %s: %d parked events released (sent back to their topics, or CANCELLED)",
                             site_id, released)
        except Exception as exc:  # Postgres or the broker away: the next refresh tries again
            log.warning("could not release parked events: %s", exc)

    async def send_back(self, events: list[ParkedEvent]) -> None:
        """Produce a batch in order and wait for every ack (then the store deletes it)."""
        acks = []
        for event in events:
            if event.cancel_reason is not None and event.request_id is not None:
                await asyncio.gather(*acks)  # the results keep their place among the events
                acks = []
                await self.cancelled(event.stage, event.request_id, event.site_id, event.cancel_reason,
                                     retry=run_of(event))
            else:
                acks.append(await self.produce(event.topic, event.key, event.value, event.headers))
        await asyncio.gather(*acks)
