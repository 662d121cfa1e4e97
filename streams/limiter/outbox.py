"""What the limiter writes to Kafka, with a producer of its own on the limiter's loop.

Both sides: every worker's asks and casts to `blog.limiter` (`to_limiter`), and
the coordinator's table changelog records and answers. Faust's producer lives on
the main loop, and every send through it waited for that loop's turns (the
ask's way to the coordinator took seconds under load, docs/bench-tier.md): the
limiter has its own aiokafka producer, configured as Faust's (brokers,
credentials, acks from all replicas), made and used on the limiter's loop
(own_loop.py). A worker's records to `blog.limiter` leave in the order they were
handed over (one sender, one producer), so a slot's release never overtakes the
ask it follows. Records are the bytes Faust would write: values in the topic's
serializer, the table's changelog keys and values in its serializers, answers as
Faust's `ReqRepResponse`, which the asking worker's reply consumer reads as if
the agent had replied. The table's own copy (what a rebalance recovers from,
with the changelog) is updated on the main loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from typing import Any, Mapping

from faust.agents.models import ReqRepResponse

from streams.app import app
from streams.limiter.own_loop import OwnLoop
from streams.limiter.replies import fulfill_here

log = logging.getLogger(__name__)


class Outbox:
    """The coordinator's producer (started at its first write, again after one that failed to start)."""

    def __init__(self, own: OwnLoop, table: Any) -> None:
        self.own, self.table = own, table
        self._producer: Any = None
        self._reply_topics: dict[str, Any] = {}  # Faust topics, for their serializers only
        # Records for blog.limiter, in order: (topic, value, headers, the caller's future of the ack).
        self._to_send: deque[tuple[str, bytes, Any, asyncio.Future]] = deque()
        self._sender: asyncio.Task | None = None
        self._starting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    async def _started(self) -> Any:
        if self._producer is None:
            loop = asyncio.get_running_loop()
            if self._starting is None or self._starting[0] is not loop:
                self._starting = (loop, asyncio.Lock())
            async with self._starting[1]:  # one producer, however many sends wait for the first
                return await self._start_once()
        return self._producer

    async def _start_once(self) -> Any:
        if self._producer is None:
            import aiokafka

            faust_producer = app.producer
            config = {**faust_producer._settings_default(), **faust_producer._settings_auth(),
                      "client_id": f"{faust_producer.client_id}-limiter"}
            producer = aiokafka.AIOKafkaProducer(**config)
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None,
                       headers: Any = None) -> asyncio.Future:
        """Queue one record; returns the future of the broker's ack."""
        producer = await self._started()
        return await producer.send(topic, value=value, key=key, partition=partition, headers=headers)

    def to_limiter(self, topic: Any, value: Any, headers: Any = None) -> asyncio.Future:
        """Send `value` to `topic` (blog.limiter, a Faust topic: its serializer) after every record handed
        over before it. Returns a future of the caller's loop, done when the broker has the record."""
        open_headers = topic.prepare_headers(headers)
        data, open_headers = topic.prepare_value(value, None, None, open_headers)
        if isinstance(open_headers, Mapping):
            open_headers = list(open_headers.items())
        acked = asyncio.get_running_loop().create_future()
        self._to_send.append((topic.get_topic_name(), data, list(open_headers or ()) or None, acked))
        self.own.hand_over(self._wake_sender)
        return acked

    def _wake_sender(self) -> None:
        """On the limiter's loop: the one task sending `_to_send` in order (started again when it ended)."""
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_in_order())

    async def _send_in_order(self) -> None:
        while self._to_send:
            topic, data, headers, acked = self._to_send.popleft()
            try:
                ack = await self._produce(topic, None, data, None, headers)
            except Exception as exc:  # the producer could not start (the broker away): this record fails
                _settle(acked, None, exc)
                continue
            ack.add_done_callback(functools.partial(_settle_from, acked))

    async def write_table(self, writes: dict[str, Any]) -> list[asyncio.Future]:
        """Queue each key's new value (None: deleted) on the table's changelog; the futures of their acks."""
        changelog = self.table.changelog_topic
        name = changelog.get_topic_name()
        self.own.on_main(_mirror, self.table, dict(writes))
        futures = []
        for key, value in writes.items():
            key_bytes, _ = changelog.prepare_key(key, self.table.key_serializer)
            value_bytes = None if value is None else changelog.prepare_value(value, self.table.value_serializer)[0]
            futures.append(await self._produce(name, key_bytes, value_bytes, 0))
        return futures

    async def answer(self, reply_to: str, correlation_id: str, value: dict[str, Any]) -> None:
        """Send an answer to the worker that asked (through its reply topic; in-process for this one)."""
        if reply_to == app.conf.reply_to:
            # The asker is this process: handed over on the main loop (its promises live there),
            # instead of going through the reply topic and back.
            self.own.on_main(fulfill_here, correlation_id, value)
            return
        topic = self._reply_topics.get(reply_to)
        if topic is None:
            if len(self._reply_topics) >= 1000:  # workers' names come and go: keep it bounded
                self._reply_topics.clear()
            topic = self._reply_topics[reply_to] = app.topic(reply_to)
        response = ReqRepResponse(key=None, value=value, correlation_id=correlation_id)
        value_bytes, _ = topic.prepare_value(response, None)
        await self._produce(reply_to, None, value_bytes, None)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


def _mirror(table: Any, writes: dict[str, Any]) -> None:
    """The table's copy in this worker, as the changelog will have it (main loop: Faust's table)."""
    data = table.data
    for key, value in writes.items():
        if value is None:
            if key in data:
                del data[key]
        else:
            data[key] = value


def _settle_from(acked: asyncio.Future, ack: asyncio.Future) -> None:
    if ack.cancelled():
        _settle(acked, None, asyncio.CancelledError())
    else:
        _settle(acked, None if ack.exception() else ack.result(), ack.exception())


def _settle(acked: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    """Complete a future of another loop (or this one) with a result or an error."""
    def complete() -> None:
        if acked.done():
            return
        if isinstance(exc, asyncio.CancelledError):
            acked.cancel()
        elif exc is not None:
            acked.set_exception(exc)
        else:
            acked.set_result(result)

    loop = acked.get_loop()
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        complete()
    elif not loop.is_closed():
        loop.call_soon_threadsafe(complete)
