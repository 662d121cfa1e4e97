"""The Faust app and the topics that carry a blog request through its stages.

    blog.requests ──generate──▶ blog.drafts ──image──▶ blog.illustrated ──publish──▶ blog.results
          └──────────────────────── sink: every topic ──▶ Postgres blog_generations ◀──┘
    blog.dlq       bytes that are not a valid record, with the reason in headers
    blog.limiter   one partition: permit asks to the single budget coordinator

Every stage topic is keyed by site id and has the same partition count, so all
of one site's work sits on one partition number. Values are Avro single-object
encoded bytes (see streams/records.py); the stages decode them explicitly so a
bad record becomes a dead letter, never a crashed agent.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from pathlib import Path
from typing import Any

import faust

from streams.settings import settings

log = logging.getLogger(__name__)

# name -> partitions; every stage topic shares one partition count (co-partitioned by site)
STAGE_TOPICS = ("blog.requests", "blog.drafts", "blog.illustrated", "blog.results", "blog.dlq")
LIMITER_TOPIC = "blog.limiter"


def topic_name(name: str) -> str:
    return f"{settings.topic_prefix}{name}"


def wanted_topics() -> dict[str, int]:
    wanted = {topic_name(t): settings.topic_partitions for t in STAGE_TOPICS}
    wanted[topic_name(LIMITER_TOPIC)] = 1
    return wanted


async def ensure_topics(timeout: float = 60.0) -> None:
    """Create missing topics and wait until the broker's metadata lists them.

    Faust would create internal topics itself, but subscribes right after, and a
    topic missing from the metadata at that moment is ignored for good.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    bootstrap = settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = wanted_topics()
        missing = [n for n in wanted if n not in set(await admin.list_topics())]
        if missing:
            try:
                await admin.create_topics([NewTopic(n, num_partitions=wanted[n], replication_factor=1) for n in missing])
            except TopicAlreadyExistsError:  # another worker won the race
                pass
            log.info("created topics %s", ", ".join(missing))
        deadline = asyncio.get_running_loop().time() + timeout
        while set(wanted) - set(await admin.list_topics()):
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"topics {sorted(set(wanted) - set(await admin.list_topics()))} did not appear in {timeout}s")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


# The garbage collector's thresholds once the worker has started.
GC_THRESHOLDS = (20_000, 100, 100)


class BlogstreamApp(faust.App):
    async def on_first_start(self) -> None:
        Path(self.conf.datadir).mkdir(parents=True, exist_ok=True)
        await super().on_first_start()
        await ensure_topics()

    async def on_started(self) -> None:
        await super().on_started()
        # With the collector's defaults (700, 10, 10) a burst of 5,000 intake
        # requests spent about a quarter of its CPU in it, and full passes stall
        # the event loop (and every permit) for tens of ms. Everything loaded so
        # far (Faust, the SDKs, the schemas) lives as long as the worker: frozen,
        # full passes skip it. Young objects are collected every 20,000
        # allocations, full passes are rare. See also streams.intake.BurstGC.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)


app = BlogstreamApp(
    settings.app_id,
    broker=settings.kafka_broker,
    # Tables (the limiter's budget state) live in memory and are rebuilt from
    # their changelog topic when a worker takes over.
    store="memory://",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    web_port=settings.web_port,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    # /table would expose budget internals; our own pages show what users need.
    web_tables_enabled=False,
    # Stage events are processed concurrently and acked in offset order by
    # streams.runner; effects are idempotent, so a rebalance need not wait for
    # provider calls that take seconds.
    stream_wait_empty=False,
    # Permit asks use agent.ask(), whose replies come back on a reply topic.
    reply_create_topic=True,
    # One reply topic per worker process, named after the app so its topics
    # can be found (and cleaned up) together.
    reply_to=f"{settings.app_id}-reply-{uuid.uuid4().hex}",
    producer_acks=-1,
    broker_commit_every=500,
    broker_commit_interval=1.0,
    broker_session_timeout=settings.kafka_session_timeout_seconds,
    broker_heartbeat_interval=settings.kafka_heartbeat_seconds,
    broker_max_poll_records=settings.kafka_max_poll_records,
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=1,
    datadir=settings.data_dir,
)


# --- a faust fix: records dropped at startup or in a rebalance are read again ---
# While partitions are paused (table recovery at startup, a rebalance) Faust can
# take records from aiokafka and drop them, then seeks every partition back to
# its committed offset to read them again. aiokafka's seek_to_committed skips a
# partition that has nothing committed yet, so there the dropped records were
# never read again and their requests stalled for good (seen in
# tests/integration/test_crash_recovery.py after a SIGKILL). Such stage
# partitions go back to their beginning (= auto_offset_reset "earliest");
# replays are harmless, every effect is claimed once in Postgres.
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread  # noqa: E402

_seek_to_committed = AIOKafkaConsumerThread.seek_to_committed


async def _seek_to_committed_or_beginning(self: AIOKafkaConsumerThread) -> dict:
    committed = await _seek_to_committed(self)
    stage = {topic_name(t) for t in STAGE_TOPICS}
    fresh = [tp for tp, offset in committed.items() if not offset and tp.topic in stage]
    if fresh:
        consumer = self._ensure_consumer()
        await self.call_thread(consumer.seek_to_beginning, *fresh)
        starts = await self.call_thread(consumer.beginning_offsets, fresh)
        _log_start.update({(tp.topic, tp.partition): int(offset) for tp, offset in starts.items()})
    return committed


AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed_or_beginning  # type: ignore[method-assign]


# --- a faust fix: never commit past a stage event nobody finished ---------------
# Faust commits the first run of consecutive acked offsets of a partition. It
# compares that run with the last commit only when there is one, and even then
# lets one missing offset through (`min(acked) - committed > 1`). So an event
# Faust never handed to its agent was committed past as soon as the next one was
# done, and its request stalled for good: seen after a worker was killed and its
# partitions moved, about 1 run in 8 of tests/integration/test_crash_recovery.py
# (the survivor's runner logged "events of <drafts partition> start at offset 1"
# with nothing committed: offset 0 never reached it; why, we do not know yet;
# the runner now reads such a partition again, see StageRunner._in_sequence).
# A stage partition now commits only from where it must start:
# its committed offset, or for one with nothing committed the log start it was
# sought to. A lost event then holds its partition's commits (consumer lag shows
# it, and the next owner reads it again) instead of vanishing.
from faust.transport.consumer import Consumer as _FaustConsumer  # noqa: E402

_log_start: dict[tuple[str, int], int] = {}  # stage partitions with nothing committed -> log start offset
_STAGE_NAMES = frozenset(topic_name(t) for t in STAGE_TOPICS)
_new_offset = _FaustConsumer._new_offset


def _start_of(consumer: _FaustConsumer, tp: Any) -> int | None:
    """Where a stage partition's events must start: its commit, else the log start it was sought to."""
    committed = consumer._committed_offset.get(tp)
    if committed is not None:
        return int(committed)
    return _log_start.get((tp.topic, tp.partition))


def _new_offset_from_start(self: _FaustConsumer, tp: Any) -> int | None:
    acked = self._acked[tp]
    if acked and tp.topic in _STAGE_NAMES:
        start = _start_of(self, tp)
        if start is not None and min(acked) > start:
            return None  # the event at `start` is not done, or never came: commit nothing yet
    return _new_offset(self, tp)


_FaustConsumer._new_offset = _new_offset_from_start  # type: ignore[method-assign]


@app.on_partitions_revoked.connect
async def _forget_log_start(app_: Any, revoked: Any, **kwargs: Any) -> None:  # noqa: ARG001
    # Whoever owns them next may commit: the log start only stands in for a commit
    # until the next seek, which sets it again for partitions still without one.
    for tp in revoked:
        _log_start.pop((tp.topic, tp.partition), None)


def expected_start(tp: Any) -> int | None:
    """The offset a stage partition's events must start at after a seek (None: not known yet)."""
    return _start_of(app.consumer, tp)


def stage_topic(name: str) -> faust.TopicT:
    return app.topic(
        topic_name(name),
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )


requests_topic = stage_topic("blog.requests")
drafts_topic = stage_topic("blog.drafts")
illustrated_topic = stage_topic("blog.illustrated")
results_topic = stage_topic("blog.results")
dlq_topic = stage_topic("blog.dlq")
