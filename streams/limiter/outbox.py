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
import concurrent.futures
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


def _stopped_error() -> ConnectionError:
    return ConnectionError("the worker stopped before this record was sent")


class Outbox:
    """The coordinator's producer (started at its first write, again after one that failed to start)."""

    def __init__(self, own: OwnLoop, table: Any) -> None:
        self.own, self.table = own, table
        self._producer: Any = None
        self._reply_topics: dict[str, Any] = {}  # Faust topics, for their serializers only
        # Records for blog.limiter, in order: (topic, value, headers, the ack's outcome for the caller:
        # a thread-safe future, which the caller awaits on its own loop through asyncio.wrap_future).
        self._to_send: deque[tuple[str, bytes, Any, concurrent.futures.Future]] = deque()
        self._sender: asyncio.Task | None = None
        self._starting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._closed = False

    async def _started(self) -> Any:
        if self._producer is None:
            if self._closed:  # no new producer while or after the worker stops (nothing would close it)
                raise _stopped_error()
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
        acked: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:  # the worker is stopping: no producer is started again, the caller is told
            acked.set_exception(_stopped_error())
            return asyncio.wrap_future(acked)
        self._to_send.append((topic.get_topic_name(), data, list(open_headers or ()) or None, acked))
        self.own.hand_over(self._wake_sender)
        return asyncio.wrap_future(acked)

    def _wake_sender(self) -> None:
        """On the limiter's loop: the one task sending `_to_send` in order (started again when it ended)."""
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_in_order())

    async def _send_in_order(self) -> None:
        while self._to_send:
            topic, data, headers, acked = self._to_send.popleft()
            # A caller that stopped waiting cancelled `acked`; its record is sent all the same (in order).
            wanted = acked.set_running_or_notify_cancel()  # once running, only this side completes it
            try:
                ack = await self._produce(topic, None, data, None, headers)
            except asyncio.CancelledError:  # the worker stops (close)
                if wanted:
                    acked.set_exception(_stopped_error())
                raise
            except Exception as exc:  # the producer could not start (the broker away): this record fails
                if wanted:
                    acked.set_exception(exc)
                continue
            if wanted:
                ack.add_done_callback(functools.partial(_pass_on, acked))

    async def write_table(self, writes: dict[str, Any]) -> list[asyncio.Future]:
        """Queue each key's new value (None: deleted) on the table's changelog; the futures of their acks.

        The worker's copy of the table takes a value once the broker acked it, not before: a rebalance
        that leaves blog.limiter here loads the next epoch's book from that copy (Faust replays only
        the records that landed since its last recovery, over it) and answers re-asks of the grants it
        finds there at once. Copied when handed to the producer, a pass the broker never acked was
        answered that way, and the next owner, recovering the changelog, did not count those permits.
        """
        changelog = self.table.changelog_topic
        name = changelog.get_topic_name()
        futures: list[asyncio.Future] = []
        try:
            for key, value in writes.items():
                key_bytes, _ = changelog.prepare_key(key, self.table.key_serializer)
                value_bytes = None if value is None else changelog.prepare_value(value, self.table.value_serializer)[0]
                futures.append(await self._produce(name, key_bytes, value_bytes, 0))
        finally:  # also the records queued before a timeout cut this short
            self._mirror_once_acked(list(writes.items())[:len(futures)], futures)
        return futures

    def _mirror_once_acked(self, writes: list[tuple[str, Any]], acks: list[asyncio.Future]) -> None:
        """Copy the acked ones of a pass's writes into the table (one main-loop call a pass), when the last
        of them is done: acks of one partition come in the order written, so passes are copied in order."""
        left = len(acks)

        def done(_: asyncio.Future) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                acked = {k: v for (k, v), ack in zip(writes, acks) if not ack.cancelled() and ack.exception() is None}
                if acked:
                    self.own.on_main(_mirror, self.table, acked)

        for ack in acks:
            ack.add_done_callback(done)

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
        """The worker stops: send what is queued (the caller bounds the wait), then stop the producer.

        A record still queued when the wait ends fails its caller instead of leaving it waiting;
        so does every record handed over after.
        """
        self._closed = True
        try:
            if self._sender is not None and not self._sender.done():
                with contextlib.suppress(Exception):  # the sender tells each record's caller itself
                    await asyncio.shield(self._sender)
        finally:
            if self._sender is not None:
                self._sender.cancel()
            while self._to_send:
                acked = self._to_send.popleft()[3]
                if acked.set_running_or_notify_cancel():
                    acked.set_exception(_stopped_error())
            producer, self._producer = self._producer, None
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()  # aiokafka sends what it holds first


def _mirror(table: Any, writes: dict[str, Any]) -> None:
    """The table's copy in this worker, as the changelog will have it (main loop: Faust's table)."""
    data = table.data
    for key, value in writes.items():
        if value is None:
            if key in data:
                del data[key]
        else:
            data[key] = value


def _pass_on(acked: concurrent.futures.Future, ack: asyncio.Future) -> None:
    """The broker's ack (a future of the limiter's loop) as the caller's outcome."""
    if ack.cancelled():
        acked.set_exception(asyncio.CancelledError())
    elif ack.exception() is not None:
        acked.set_exception(ack.exception())
    else:
        acked.set_result(ack.result())
