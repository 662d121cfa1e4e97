"""The Faust app and the topics that carry a blog request through its stages.

    blog.requests ──generate──▶ blog.drafts ──image──▶ blog.illustrated ──publish──▶ blog.results
          └──────────────────────── sink: every topic ──▶ Postgres blog_generations ◀──┘
    blog.dlq       bytes that are not a valid record, with the reason in headers
    blog.limiter   one partition: permit asks to the single budget coordinator

Every stage topic is keyed by site id and has the same partition count, so all
of one site's work sits on one partition number. Values are Avro single-object
encoded bytes (see streams/contract/); the stages decode them explicitly so a
bad record becomes a dead letter, never a crashed agent.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import faust
from mode.utils.objects import cached_property

from streams import faust_fixes, log_limit, logs
from streams.gc_pacing import PacedCollections
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


async def ensure_topics(
    extra: dict[str, int] | None = None, configs: dict[str, dict[str, str]] | None = None, timeout: float = 60.0
) -> None:
    """Create missing topics and wait until the broker's metadata lists them.

    Faust would create internal topics itself, but subscribes right after, and a
    topic missing from the metadata at that moment is ignored for good.
    `extra`: more topics (name -> partitions), `configs`: topic settings by name.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    bootstrap = settings.kafka_bootstrap
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = {**wanted_topics(), **(extra or {})}
        missing = [n for n in wanted if n not in set(await admin.list_topics())]
        if missing:
            try:
                await admin.create_topics([
                    NewTopic(n, num_partitions=wanted[n], replication_factor=1, topic_configs=(configs or {}).get(n, {}))
                    for n in missing
                ])
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


def worker_identity(web_port: int) -> str:
    """This worker's name, the same after a restart: BLOGSTREAM_WORKER_ID, else `<host name>-<web port>`.

    It names the worker's reply topic, which its next life reuses (one topic
    per worker, not one per start), and its Kafka group instance id (static
    membership, BLOGSTREAM_KAFKA_STATIC_MEMBERSHIP): a worker back within the
    session timeout gets its partitions again without a rebalance. Two live
    workers must never share it; Kafka fences the older one.
    """
    name = settings.worker_id or f"{socket.gethostname()}-{web_port}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


# What a stopping worker does first, while its consumer, producer and limiter still run (in this order).
# streams/pipeline/factory.py adds the stages' drain: the provider calls in flight finish and are recorded.
FIRST_AT_STOP: list[Callable[[], Awaitable[None]]] = []


class BlogstreamApp(faust.App):
    # Two of the Faust fixes (streams/faust_fixes.py) live in objects the app builds;
    # the others are installed by the worker's assembly (streams/worker.py).
    @cached_property
    def flow_control(self) -> faust_fixes.KeepQueuedOnResume:
        return faust_fixes.KeepQueuedOnResume(loop=self.loop)

    def _new_consumer(self) -> Any:
        return faust_fixes.unfiltered_stage_reads(super()._new_consumer())

    def take_identity(self) -> None:
        """Reply topic and group instance id from the worker's identity (`--web-port` is known by now)."""
        identity = worker_identity(self.conf.web_port)
        self.conf.reply_to = f"{self.conf.id}-reply-{identity}"
        if settings.kafka_static_membership:
            self.conf.consumer_group_instance_id = f"{self.conf.id}-{identity}"

    async def on_stop(self) -> None:
        # Faust's own stop begins by stopping the consumer, then the limiter and the producer go
        # (on_before_shutdown); the tasks it has not waited for are cancelled a second later.
        for first in FIRST_AT_STOP:
            try:
                await first()
            except Exception:  # the stop goes on whatever happens here
                log.exception("stopping: %s failed", getattr(first, "__qualname__", first))
        await super().on_stop()

    async def on_first_start(self) -> None:
        self.take_identity()  # before the reply consumer and the Kafka consumer start
        log_limit.install()  # the same WARNING line over and over (a broker away): a few, then a count
        Path(self.conf.datadir).mkdir(parents=True, exist_ok=True)
        await super().on_first_start()
        # This worker's permit replies (streams/limiter/client.py), kept as long as Faust keeps replies.
        reply_retention = {"retention.ms": str(int(self.conf.reply_expires * 1000))}
        await ensure_topics({self.conf.reply_to: 1}, {self.conf.reply_to: reply_retention})

    async def on_started(self) -> None:
        await super().on_started()
        # With the collector's defaults (700, 10, 10) a burst of 5,000 intake
        # requests spent about a quarter of its CPU in it, and full passes stall
        # the event loop (and every permit) for tens of ms. Everything loaded so
        # far (Faust, the SDKs, the schemas) lives as long as the worker: frozen,
        # full passes skip it. Young objects are collected every 20,000
        # allocations, full passes are rare. See also streams.api.intake.BurstGC.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        sys.setswitchinterval(settings.gil_switch_interval_seconds)  # permits wait less for the other threads
        # And young passes on a clock: the count above hardly grows at steady state (streams/gc_pacing.py).
        if settings.gc_young_every_seconds > 0:
            self.add_future(PacedCollections(settings.gc_young_every_seconds).run())


app = BlogstreamApp(
    settings.app_id,
    broker=settings.kafka_broker,
    # Tables (the limiter's budget state) live in memory and are rebuilt from
    # their changelog topic when a worker takes over.
    store="memory://",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=1,
    web_port=settings.web_port,
    web_host="127.0.0.1",  # the canonical URL's host (faust --web-host); web_bind: the address served on
    web_bind=settings.web_bind,
    # /table would expose budget internals; our own pages show what users need.
    web_tables_enabled=False,
    # Stage events are processed concurrently and acked in offset order by
    # streams.pipeline.runner; effects are idempotent, so a rebalance need not wait for
    # provider calls that take seconds.
    stream_wait_empty=False,
    # Permit asks use agent.ask(), whose replies come back on a reply topic.
    reply_create_topic=True,
    # One reply topic per worker, `<app id>-reply-<worker identity>`, kept across
    # restarts (set at start by BlogstreamApp.take_identity).
    reply_to=f"{settings.app_id}-reply-{worker_identity(settings.web_port)}",
    producer_acks=-1,
    # Records sent within 5 ms share one produce request: at hundreds of blogs a second one
    # request per record made the socket writes 12% of a worker's CPU (docs/bench-capacity.md);
    # 5 ms is nothing next to a provider call.
    producer_linger=0.005,
    broker_commit_every=500,
    broker_commit_interval=1.0,
    broker_session_timeout=settings.kafka_session_timeout_seconds,
    broker_heartbeat_interval=settings.kafka_heartbeat_seconds,
    broker_max_poll_records=settings.kafka_max_poll_records,
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=1,
    datadir=settings.data_dir,
    # BLOGSTREAM_LOG_FORMAT=json: Faust's worker sets logging up from this, with JSON lines (streams/logs.py).
    logging_config=logs.logging_config(settings.log_format),
)
logs.install(settings.log_format)


@app.on_partitions_revoked.connect
async def _forget_starts(app_: Any, revoked: Any, **kwargs: Any) -> None:  # noqa: ARG001
    faust_fixes.forget_starts(revoked)


def expected_start(tp: Any) -> int | None:
    """The offset a stage partition's events must start at after a seek (None: not known yet)."""
    return faust_fixes.start_of(app.consumer, tp)


def stage_topic(name: str) -> faust.TopicT:
    topic = app.topic(topic_name(name), key_serializer="raw", value_serializer="raw",
                      partitions=settings.topic_partitions)
    # Faust's buffer between its consumer and a stage's runner, in events: its default (4,096) is 4 GB of
    # 1-MB records; the runner's own read-ahead is bounded in events and bytes (pipeline/runner.py). Set
    # here, as app.topic() drops its `maxsize` argument; the stage's reading clone copies it.
    topic.maxsize = settings.stream_buffer_events
    return topic


requests_topic = stage_topic("blog.requests")
drafts_topic = stage_topic("blog.drafts")
illustrated_topic = stage_topic("blog.illustrated")
results_topic = stage_topic("blog.results")
dlq_topic = stage_topic("blog.dlq")
