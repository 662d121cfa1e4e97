"""The intake's Kafka producer: many submissions per record batch, answered once acked."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable

from streams.app import app, requests_topic
from streams.contract import encode_checked
from streams.contract.requests import priority_headers

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers (the lane of a bulk request)


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
        self._queue: list[tuple[list[Record], asyncio.Future]] = []
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partitions: dict[bytes, int] = {}  # key -> partition, for the partition count in `_partition_count`
        self._partition_count = 0

    def send(self, requests: list[dict[str, Any]]) -> asyncio.Future:
        """A future that is done once every record of `requests` is acked by the broker."""
        records = [(r["site_id"].encode(), encode_checked("BlogRequest", r), priority_headers(r)) for r in requests]
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

    async def _produce(self, queue: list[tuple[list[Record], asyncio.Future]]) -> None:
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
        self, queue: list[tuple[list[Record], asyncio.Future]]
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
        by_partition: dict[int, list[tuple[bytes, bytes, list[tuple[str, bytes]], asyncio.Future]]] = {}
        for records, done in queue:
            for key, value, headers in records:
                partition = partitions.get(key)
                if partition is None:
                    partition = partitions[key] = faust_producer.key_partition(self.topic, key).partition
                by_partition.setdefault(partition, []).append((key, value, headers, done))
        sends = []
        for partition, records in by_partition.items():
            batch, members = producer.create_batch(), set()
            for key, value, headers, done in records:
                if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
                    if not members:
                        raise ValueError(f"a record of {len(value)} bytes does not fit in a Kafka batch")
                    sends.append((partition, batch, members))
                    batch, members = producer.create_batch(), set()
                    if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
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
