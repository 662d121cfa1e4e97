"""What we change in Faust 0.15 so that no stage event is lost, and why.

Faust hands records to agents through per-channel queues and commits the first
run of acked offsets. Several of its rules lost stage events after a rebalance
(a worker killed, one joining): the event was never handed to its agent, or
its offset was committed without anyone finishing it, and the request stalled
for good. Each fix below says what Faust does, how it lost events, and what
we do instead. They apply to the stage topics only (`install` names them);
every other topic (the limiter's, replies, changelogs) keeps Faust's rules.
Fixes 6 to 8 and 11 keep the limiter's request/reply (`agent.ask()`) and its
permit latency sound; 9 keeps a worker calm while the broker is away. Every patch of
Faust's (and aiokafka's) code is here, applied by `install()`.

Tests: tests/streams/test_faust_fixes.py (each rule on its own) and
tests/integration/test_crash_recovery.py (workers killed mid-run, every
request finished once).
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Awaitable, Callable, Iterable

from aiokafka.client import AIOKafkaClient
from faust.agents.replies import ReplyConsumer, ReplyPromise
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.utils.queues import FlowControlEvent

from streams.settings import settings

log = logging.getLogger(__name__)

stage_topics: set[str] = set()  # filled by install()
partition_start: dict[tuple[str, int], int] = {}  # stage partition -> where its events start (fix 4), noted at each seek


# --- 1. resuming flow that already runs must not empty the queues --------------
# `FlowControlEvent.resume()` clears every channel queue. Recovery resumes flow
# to read the table changelogs, then resumes stage partitions, seeks them to
# their commits and resumes flow a second time. Stage records fetched between
# the seek and that second resume were already in the agents' queues, and the
# second resume threw them away. aiokafka had moved past them, so nothing read
# them again. (Found with a trace of every record in a killed-worker test: a
# record put into the queue at 45.065 s, flow resumed at 45.065 s, the agent's
# first record was the next offset.) Only the resume that ends a suspension
# drops queued records: those belong to the assignment before the rebalance.
class KeepQueuedOnResume(FlowControlEvent):
    def resume(self) -> None:
        was_suspended = not self.is_active()
        self._suspend.clear()
        self._resume.set()
        if was_suspended:
            self.clear()


# --- 2. stage records are never filtered by Faust's read offset ----------------
# Faust drops a record whose offset is below the last one it read from the
# partition ("DROPPED MESSAGE ROFF"), and a seek updates that read offset only
# after aiokafka has moved. Records fetched in between were dropped as already
# read while aiokafka went past them: a seek back (Faust's own, or a runner's
# rewind) then lost the very records it was meant to bring back. Stage
# partitions skip that filter; the stage runners and the sink take replays
# (they ignore what they already have; writes are idempotent). Without a read
# offset Faust also never marks a "gap" of offsets as done for them.
class StageReadOffsets(defaultdict):
    def __getitem__(self, tp: Any) -> int | None:
        if tp.topic in stage_topics:
            return None
        return super().__getitem__(tp)


def unfiltered_stage_reads(consumer: Consumer) -> Consumer:
    consumer._read_offset = StageReadOffsets(lambda: None, consumer._read_offset)
    return consumer


# --- 3. acks from before a rebalance do not count after it ---------------------
# A stream that takes a record while flow is suspended (a rebalance is on)
# skips it and acks it. Faust has already dropped the partition's acks by then,
# so that ack lands in the next assignment's list: an offset nobody processed,
# which the commit may then pass. An ack counts only for a record of the
# current generation while flow runs; the record is read again after the
# rebalance anyway.
_ack = Consumer.ack


def ack_if_current(self: Consumer, message: Any) -> bool:
    if message.topic in stage_topics and (
        message.generation_id != self.app.consumer_generation_id or not self.app.flow_control.is_active()
    ):
        return False
    return _ack(self, message)


# --- 4. a partition with nothing committed starts at its log start -------------
# After a rebalance Faust seeks every partition to its committed offset;
# aiokafka skips a partition with nothing committed yet, leaving it wherever it
# was. Such stage partitions go to their beginning (= auto_offset_reset
# "earliest"), and where that is stands in for the commit until there is one.
# Every start is known before the seeks begin: Faust hands records over while
# aiokafka seeks one partition after another, and the runners take none of a
# partition whose start is not known (streams/pipeline/runner.py).
_seek_to_committed = AIOKafkaConsumerThread.seek_to_committed


async def _committed_of(consumer: Any, tps: list) -> dict:
    """Each partition's commit (None or -1: nothing committed), in one request: aiokafka's `committed()`
    asks the broker once per partition (its seek_to_committed then asks again for its own seeks)."""
    found = await consumer._coordinator.fetch_committed_offsets(tps)
    return {tp: found[tp].offset if tp in found else None for tp in tps}


async def seek_to_committed_or_beginning(self: AIOKafkaConsumerThread) -> dict:
    consumer = self._ensure_consumer()
    stage = [tp for tp in self.assignment() if tp.topic in stage_topics]
    if stage:
        await _note_starts(self, consumer, await self.call_thread(_committed_of, consumer, stage))
    committed = await _seek_to_committed(self)
    fresh = [tp for tp, offset in committed.items() if not _past_zero(offset) and tp.topic in stage_topics]
    if fresh:
        await self.call_thread(consumer.seek_to_beginning, *fresh)
    return committed


def _past_zero(offset: int | None) -> bool:
    return offset is not None and offset > 0  # what aiokafka's seek_to_committed seeks to


async def _note_starts(self: AIOKafkaConsumerThread, consumer: Any, commits: dict) -> None:
    """Each stage partition's start: its commit, else where its log begins (where it is sought to)."""
    partition_start.update({(tp.topic, tp.partition): int(offset) for tp, offset in commits.items() if _past_zero(offset)})
    fresh = [tp for tp, offset in commits.items() if not _past_zero(offset)]
    if fresh:
        starts = await self.call_thread(consumer.beginning_offsets, fresh)
        partition_start.update({(tp.topic, tp.partition): int(offset) for tp, offset in starts.items()})


def forget_starts(revoked: Iterable[Any]) -> None:
    # Whoever owns them next may commit: a noted start only stands in for Faust's
    # record of the commit until the next seek, which notes it again.
    for tp in revoked:
        partition_start.pop((tp.topic, tp.partition), None)


def start_of(consumer: Consumer, tp: Any) -> int | None:
    """Where a stage partition's events must start: its commit, else the start noted at its seek."""
    committed = consumer._committed_offset.get(tp)
    if committed is not None:
        return int(committed)
    return partition_start.get((tp.topic, tp.partition))


# --- 5. never commit past a stage event nobody finished -------------------------
# Faust commits the first run of consecutive acked offsets. It compares that run
# with the last commit only when there is one, and even then lets one missing
# offset through (`min(acked) - committed > 1`, faust #606). A stage partition
# commits only when its acks start where its events must start, so an event
# that never came holds the partition's commits (consumer lag shows it, the
# next owner reads it again) instead of vanishing.
_new_offset = Consumer._new_offset


def new_offset_from_start(self: Consumer, tp: Any) -> int | None:
    acked = self._acked[tp]
    if acked and tp.topic in stage_topics:
        start = start_of(self, tp)
        if start is not None and min(acked) > start:
            return None  # the event at `start` is not done, or never came: commit nothing yet
    return _new_offset(self, tp)


# --- 6. a late or repeated reply to agent.ask() must not stop the worker ---------
def fulfill_once(self: ReplyPromise, correlation_id: str, value: Any) -> None:
    # faust's ReplyConsumer calls set_result() on every reply; a reply for a
    # promise that was cancelled (an ask that timed out) or already answered
    # raises InvalidStateError, which crashes the ReplyConsumer and stops the
    # whole worker. Late and duplicate replies are normal here: ignore them.
    if not self.done():
        self.set_result(value)



# --- 7. permit replies: subscribed once, and in the first subscription ----------
async def start_reply_fetcher(self: ReplyConsumer, topic_name: str) -> None:
    # faust's version adds the reply topic to the conductor *and* iterates it,
    # and iterating subscribes a clone: every reply then goes to two queues,
    # one of which nobody reads. After ~3,300 replies (4/5 of
    # stream_buffer_maxsize) that queue is "under pressure", Faust stops
    # fetching the reply partition, no permit answer arrives any more, and the
    # worker stalls for good (seen in the 800-request benchmark). Here only
    # the iterating clone is subscribed.
    # It is subscribed at once, not when the drain task first runs (after a
    # 3 s sleep in faust's version): the worker's first subscription must
    # hold it. 2 worker starts in 100 missed it; Faust's conductor then adds
    # a topic only 45 s later, with one more rebalance, and drops the change
    # altogether if it comes during a rebalance. The topic itself is created
    # at start (BlogstreamApp.on_first_start), so there is nothing to wait for.
    if topic_name not in self._fetchers:
        self._fetchers[topic_name] = None  # the key is the lock, as in faust
        topic = self._reply_topic(topic_name)
        await topic.maybe_declare()
        replies = topic.__aiter__()  # the iterating clone, now in app.topics
        self._fetchers[topic_name] = self.add_future(self._drain_replies(replies))



# --- 8. a faust setting that is not a setting: the fetch long-poll ----------------
# Faust builds the worker's consumer with fetch_max_wait_ms=1500, hard-coded.
# aiokafka keeps one fetch in flight per broker, and a partition whose records
# are still buffered is left out of it. So an ask that reaches blog.limiter
# while such a fetch is parked on the broker waits for it to time out: a permit
# (or a reply to one) took up to 1.5 s. A short long-poll bounds that wait;
# the price is a few dozen empty fetches per second per worker when idle.
FETCH_MAX_WAIT_MS = settings.fetch_max_wait_ms  # BLOGSTREAM_FETCH_MAX_WAIT_MS, 20 by default

_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def create_worker_consumer_fast(self: AIOKafkaConsumerThread, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
    return consumer


# --- 9. a broker that is away must not make aiokafka spin ------------------------
# While the broker is unreachable a metadata update fails at once (connection
# refused), and aiokafka's producer sender and consumer fetcher ask for the
# next one as soon as the last has failed: a loop without a pause. In a broker
# restart each worker made about 700 updates a second and logged two ERROR
# lines for each (9 MB in 25 s). A failed update now returns only after a
# pause (retry_backoff, doubling up to 1 s), so whoever waits on it tries
# about once a second; a success resets it.
METADATA_RETRY_CAP = 1.0

_metadata_update = AIOKafkaClient._metadata_update


async def metadata_update_paced(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
    # This runs in aiokafka's metadata task: if it raised, the task would end and
    # every later wait for metadata (fetches, the group coordinator, commits)
    # would hang for good. Seen once after a broker restart: a worker's consumer
    # fetched nothing more and left the group (the likely cause, a log filter
    # that raised from two threads at once, is fixed in streams/log_limit.py).
    try:
        ok = await _metadata_update(self, cluster_metadata, topics)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.warning("kafka metadata update failed", exc_info=True)
        ok = False
    failures = getattr(self, "_failed_metadata_updates", 0)
    self._failed_metadata_updates = 0 if ok else failures + 1
    if not ok:
        await asyncio.sleep(min(METADATA_RETRY_CAP, self._retry_backoff * 2 ** min(failures, 10)))
    return ok


# --- 10. a table recovery that never gets its records is started again ------------
# Seen three times at worker start with several workers (../shared/NOTES.md): the
# worker that got the limiter's changelog wrote its first record, the next
# rebalance gave it the partition again, and Recovery waited for that record
# (highwater 0, reading from -1) for good: "No event received for active tp".
# Not root-caused. Nothing else runs on a worker in recovery, and the limiter's
# coordinator never starts, so the whole pipeline waits. Watched here: once the
# recovery has waited STUCK_RECOVERY_SECONDS with a partition that is behind
# its highwater and has given nothing, the partition is sought again to where
# Recovery reads from and resumed; if that brings nothing either, the worker
# asks its group to rebalance, which starts the recovery afresh.
STUCK_RECOVERY_SECONDS = 10.0


class RecoveryWatch:
    def __init__(self) -> None:
        self.started: float | None = None  # the recovery being watched (Recovery's monotonic start)
        self.steps = 0  # what was tried on it: 1 seek, 2 rebalance

    def silent(self, recovery: Any) -> list:
        """Active changelog partitions behind their highwater that gave no record since the recovery began."""
        received = recovery._active_events_received_at
        silent = []
        for tp in recovery.active_tps:
            highwater, offset = recovery.active_highwaters.get(tp), recovery.active_offsets.get(tp)
            if received.get(tp) is None and highwater is not None and highwater > (-1 if offset is None else offset):
                silent.append(tp)
        return silent

    async def check(self, app: Any, now: float) -> str | None:
        """One look (every few seconds); returns what it did, if anything."""
        recovery = app.tables.recovery
        started = recovery._recovery_started_at
        if not recovery.in_recovery or started is None:
            self.started, self.steps = None, 0
            return None
        if started != self.started:
            self.started, self.steps = started, 0
        if self.steps >= 2 or now - started < STUCK_RECOVERY_SECONDS * (self.steps + 1):
            return None
        silent = self.silent(recovery)
        if not silent:
            return None
        self.steps += 1
        consumer = app.consumer
        if self.steps == 1:
            log.warning("table recovery got nothing from %s in %.0f s: seeking again", silent, now - started)
            await recovery._seek_offsets(consumer, set(silent), recovery.active_offsets, "active")  # as it did
            consumer.resume_partitions(silent)
            return "seek"
        log.warning("table recovery still got nothing from %s in %.0f s: asking the group to rebalance",
                    silent, now - started)
        thread = consumer._thread
        await thread.call_thread(thread._ensure_consumer()._coordinator.request_rejoin)
        return "rebalance"


recovery_watch = RecoveryWatch()


# --- 11. the limiter's asks and the permit replies before stage events ------------
# aiokafka hands fetched records out partition by partition, in the order their
# fetches came back, and a partition keeps its place until its buffer is empty.
# A stage partition fetched with a backlog (one fetch holds up to 1 MB:
# thousands of requests) is drained 50 records a poll (kafka_max_poll_records)
# before anything fetched after it. The limiter's partition is emptied at every
# poll and fetched again, so it always came last: in 3-minute tier runs the
# coordinator read its asks 5-12 s late (its partition up to 5,000 records
# behind), permits came past their grace, and each late send was one more
# message for it. Each poll now takes those partitions first (`urgent_topics`,
# and this worker's reply topic), then fills up from the others. The order
# within a partition, and so every ack and commit rule, is unchanged.
urgent_topics: set[str] = set()

_fetch_records = AIOKafkaConsumerThread._fetch_records

Fetch = Callable[[set, "float | None", "int | None"], Awaitable[dict]]


async def urgent_first(fetch: Fetch, active: set, urgent: set, timeout: float | None,
                       max_records: int | None) -> dict:
    """One poll: records of `urgent` partitions first, then the others' up to `max_records` in all."""
    urgent = urgent & active
    first = await fetch(urgent, 0, max_records) if urgent else {}
    if not first:  # nothing urgent buffered: an ordinary poll (it waits for whatever comes first)
        return await fetch(active, timeout, max_records)
    others = active - urgent
    left = None if max_records is None else max_records - sum(len(r) for r in first.values())
    if not others or (left is not None and left <= 0):
        return first
    return {**first, **await fetch(others, 0, left)}


async def fetch_urgent_first(self: AIOKafkaConsumerThread, consumer: Any, active_partitions: set,
                             timeout: float | None = None, max_records: int | None = None) -> dict:
    reply_to = self.app.conf.reply_to
    urgent = {tp for tp in active_partitions if tp.topic in urgent_topics or tp.topic == reply_to}

    async def fetch(partitions: set, wait: float | None, most: int | None) -> dict:
        return await _fetch_records(self, consumer, partitions, timeout=wait, max_records=most)

    return await urgent_first(fetch, set(active_partitions), urgent, timeout, max_records)


# --- what the consumer holds of a partition (read only, for the log) ----------------
# A stage partition with records waiting can go 30-70 s without delivering under
# heavy load (the runners' stall watchdog reads it again; cause not found, docs/
# bench-capacity-latency.md). Where its records wait, between aiokafka's buffer,
# Faust's flow control and the agent's queue, is logged with each read-again.
def partition_view(app: Any, tp: Any) -> str:
    """Faust's and aiokafka's state of `tp`, one line; never raises (internals read without locks)."""
    try:
        consumer = app.consumer
        active = consumer._active_partitions or ()
        parts = [f"faust: active={tp in active} held_for_full_queue={tp in consumer._buffered_partitions} "
                 f"paused={tp in consumer._paused_partitions} flow_active={consumer.flow_active}"]
        # `_queue`, not `queue`: the property would make one for a channel that has none.
        queues = [topic._queue.qsize() for topic in app.topics
                  if getattr(topic, "_queue", None) is not None and tp.topic in getattr(topic, "topics", ())]
        parts.append(f"agent queue={','.join(map(str, queues)) or 'none'}")
        kafka = consumer._thread._consumer
        fetcher = kafka._fetcher
        buffered = fetcher._records.get(tp)
        state = kafka._subscription.subscription.assignment.state_value(tp)
        parts.append(f"aiokafka: buffered={type(buffered).__name__ if buffered is not None else None} "
                     f"position={state._position} paused={state.paused} highwater={state.highwater} "
                     f"fetch_in_flight={bool(fetcher._in_flight)} partitions_buffered={len(fetcher._records)}")
        return "; ".join(parts)
    except Exception as exc:  # a rebalance under way, an internal renamed by an upgrade
        return f"consumer state not readable ({exc!r})"


def install(topics: Iterable[str], urgent: Iterable[str] = ()) -> None:
    """Apply every fix; 5 and the read-offset rule (2) concern these stage topics only,
    11 reads the `urgent` topics (the limiter's) first.

    Called once by the worker's assembly (streams/worker.py). 1 and 2 are set
    up by the app itself (`BlogstreamApp`), since they live in objects it builds.
    """
    stage_topics.update(topics)
    urgent_topics.update(urgent)
    Consumer.ack = ack_if_current  # type: ignore[method-assign]
    Consumer._new_offset = new_offset_from_start  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed_or_beginning  # type: ignore[method-assign]
    ReplyPromise.fulfill = fulfill_once  # type: ignore[method-assign]
    ReplyConsumer._start_fetcher = start_reply_fetcher  # type: ignore[method-assign]
    AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer_fast  # type: ignore[method-assign]
    AIOKafkaClient._metadata_update = metadata_update_paced  # type: ignore[method-assign]
    AIOKafkaConsumerThread._fetch_records = fetch_urgent_first  # type: ignore[method-assign]
