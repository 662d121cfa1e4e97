"""What the coordinator writes to Kafka: its table's changelog records and its answers, with a producer of its own.

The coordinator runs on a loop of its own (own_loop.py). Faust's producer lives
on the main loop, and every send through it waited for that loop's turns: the
coordinator has its own aiokafka producer, configured as Faust's (brokers,
credentials, acks from all replicas), made and used on the coordinator's loop.
Records are the bytes Faust would write: the table's changelog keys and values
in its serializers, and answers as Faust's `ReqRepResponse`, which the asking
worker's reply consumer reads as if the agent had replied. The table's own copy
(what a rebalance recovers from, with the changelog) is updated on the main loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faust.agents.models import ReqRepResponse

from streams.app import app
from streams.limiter.own_loop import OwnLoop

log = logging.getLogger(__name__)


class Outbox:
    """The coordinator's producer (started at its first write, again after one that failed to start)."""

    def __init__(self, own: OwnLoop, table: Any) -> None:
        self.own, self.table = own, table
        self._producer: Any = None
        self._reply_topics: dict[str, Any] = {}  # Faust topics, for their serializers only

    async def _started(self) -> Any:
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

    async def _produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> asyncio.Future:
        """Queue one record; returns the future of the broker's ack."""
        producer = await self._started()
        return await producer.send(topic, value=value, key=key, partition=partition)

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
            self.own.on_main(_fulfill_here, correlation_id, value)
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


def _fulfill_here(correlation_id: str, value: dict[str, Any]) -> None:
    """An answer nobody waits for any more (the ask gave up, or a copy was answered) is dropped, as the
    reply consumer would."""
    waiting = app._reply_consumer._waiting  # type: ignore[attr-defined]
    for promise in list(waiting.get(correlation_id, ())):
        if not promise.done():
            promise.fulfill(correlation_id, {**value})
