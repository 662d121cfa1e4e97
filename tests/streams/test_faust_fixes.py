"""streams/faust_fixes.py: each change to Faust's rules on its own, with Faust's own code around it."""
from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from types import SimpleNamespace
from weakref import WeakSet

from faust.tables.recovery import Recovery
from hypothesis import given, settings
from hypothesis import strategies as st
from faust.transport.consumer import Consumer
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from streams import faust_fixes
from streams import worker  # noqa: F401  (the worker's assembly installs every fix, as in a real worker)
from streams.app import app, topic_name

STAGE = TP(topic_name("blog.requests"), 6)
OTHER = TP("someone-elses-topic", 0)


# --------------------------------------------------------------------------- 1. queues kept on a second resume


async def test_a_resume_while_flow_runs_keeps_what_the_queues_hold():
    flow = faust_fixes.KeepQueuedOnResume(loop=asyncio.get_running_loop())
    queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()  # the first resume: recovery starts reading changelogs
    queue.put_nowait("stage record fetched after the seek")
    flow.resume()  # the second: recovery done, stage partitions resumed
    assert queue.qsize() == 1


async def test_the_resume_that_ends_a_suspension_still_drops_records_of_the_old_assignment():
    flow = faust_fixes.KeepQueuedOnResume(loop=asyncio.get_running_loop())
    queue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()
    queue.put_nowait("record of the assignment before the rebalance")
    flow.suspend()  # a rebalance starts
    flow.resume()
    assert queue.qsize() == 0


def test_the_app_uses_it():
    assert isinstance(app.flow_control, faust_fixes.KeepQueuedOnResume)


# --------------------------------------------------------------------------- 2. no read-offset filter


def test_stage_partitions_have_no_read_offset_so_faust_drops_none_of_their_records():
    reads = faust_fixes.StageReadOffsets(lambda: None, {STAGE: 24, OTHER: 24})
    reads[STAGE] = 30  # Faust's drain loop records what it read, as before
    assert reads[STAGE] is None  # but its check `offset >= read offset` always passes
    assert reads[OTHER] == 24
    assert reads[TP("someone-elses-topic", 1)] is None


def test_the_app_s_consumer_uses_them():
    assert isinstance(app.consumer._read_offset, faust_fixes.StageReadOffsets)


# --------------------------------------------------------------------------- 3. stale acks


class _Acks:
    """The parts of Faust's Consumer that `ack` reads and writes."""

    def __init__(self, generation: int, flowing: bool = True) -> None:
        flow = SimpleNamespace(is_active=lambda: flowing)
        topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
        self.app = SimpleNamespace(consumer_generation_id=generation, flow_control=flow, topics=topics)
        self._committed_offset = defaultdict(lambda: None)
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._unacked_messages = WeakSet()
        self._n_acked = 0
        self._waiting_for_ack = None

    def ack(self, message) -> bool:
        return Consumer.ack(self, message)


class _Message:
    def __init__(self, tp: TP, offset: int, generation: int) -> None:
        self.topic, self.tp, self.offset, self.generation_id, self.acked = tp.topic, tp, offset, generation, False


def _message(tp: TP, offset: int, generation: int) -> _Message:
    return _Message(tp, offset, generation)


def test_an_ack_from_before_the_rebalance_does_not_count_after_it():
    consumer = _Acks(generation=4)
    assert not consumer.ack(_message(STAGE, 8, generation=3))  # skipped by a stream mid-rebalance
    assert consumer._acked[STAGE] == []
    assert consumer.ack(_message(STAGE, 8, generation=4))
    assert consumer._acked[STAGE] == [8]


def test_an_ack_while_flow_is_suspended_does_not_count():
    consumer = _Acks(generation=4, flowing=False)
    assert not consumer.ack(_message(STAGE, 8, generation=4))
    assert consumer._acked[STAGE] == []


def test_other_topics_keep_faust_s_acks():
    consumer = _Acks(generation=4, flowing=False)
    assert consumer.ack(_message(OTHER, 8, generation=3))
    assert consumer._acked[OTHER] == [8]


# --------------------------------------------------------------------------- 4. where a partition starts


async def test_every_partition_s_start_is_known_before_the_seeks_begin(monkeypatch):
    """Faust hands records over while aiokafka seeks one partition after another (a broker round trip or
    more between two); the runners take none of a partition whose start is not known yet."""
    committed_tp, fresh_tp = TP(STAGE.topic, 1), TP(STAGE.topic, 2)
    known_at_seek = {}

    def known(tps):  # what the runners see: Faust records the commits only after the seeks
        return {tp: faust_fixes.start_of(SimpleNamespace(_committed_offset={}), tp) for tp in tps}

    async def seek_to_committed(thread):  # aiokafka's: seeks each committed partition, leaves the others
        known_at_seek.update(known([committed_tp]))
        return {committed_tp: 42, fresh_tp: None, OTHER: None}

    class _Coordinator:
        async def fetch_committed_offsets(self, tps):  # aiokafka's: -1 for a partition with nothing committed
            return {tp: SimpleNamespace(offset=42 if tp == committed_tp else -1) for tp in tps}

    class _Consumer:
        _coordinator = _Coordinator()

        async def beginning_offsets(self, tps):
            return {tp: 7 for tp in tps}

        async def seek_to_beginning(self, *tps):
            known_at_seek.update(known(tps))

    consumer = _Consumer()

    async def call_thread(fn, *args):
        return await fn(*args)

    thread = SimpleNamespace(_ensure_consumer=lambda: consumer, call_thread=call_thread,
                             assignment=lambda: {committed_tp, fresh_tp, OTHER})
    monkeypatch.setattr(faust_fixes, "_seek_to_committed", seek_to_committed)
    try:
        assert await faust_fixes.seek_to_committed_or_beginning(thread) == {committed_tp: 42, fresh_tp: None, OTHER: None}
        assert known_at_seek == {committed_tp: 42, fresh_tp: 7}
        assert known([OTHER]) == {OTHER: None}  # not a stage topic: Faust's rules
    finally:
        faust_fixes.forget_starts([committed_tp, fresh_tp])


# --------------------------------------------------------------------------- 5. commits from the start


class _Offsets:
    """The parts of Faust's Consumer that `_new_offset` reads."""

    def __init__(self) -> None:
        self._acked = defaultdict(list)
        self._acked_index = defaultdict(set)
        self._committed_offset = defaultdict(lambda: None)
        self._gap = defaultdict(lambda: None)

    def ack(self, tp: TP, *offsets: int) -> None:
        self._acked[tp].extend(offsets)
        self._acked_index[tp].update(offsets)

    def new_offset(self, tp: TP):
        return Consumer._new_offset(self, tp)


def test_a_partition_with_nothing_committed_does_not_commit_past_an_event_that_never_came():
    c = _Offsets()
    faust_fixes.partition_start[(STAGE.topic, STAGE.partition)] = 0
    try:
        c.ack(STAGE, 1)  # offset 0 was never handed over (or is not done): faust would commit 2 here
        assert c.new_offset(STAGE) is None
        c.ack(STAGE, 0)
        assert c.new_offset(STAGE) == 2
    finally:
        faust_fixes.forget_starts([STAGE])


def test_a_committed_partition_does_not_skip_the_one_missing_offset_faust_lets_through():
    c = _Offsets()
    c._committed_offset[STAGE] = 5
    c.ack(STAGE, 6, 7)  # faust's own check only refuses a gap of two or more
    assert c.new_offset(STAGE) is None
    c.ack(STAGE, 5)
    assert c.new_offset(STAGE) == 8


def test_other_topics_keep_faust_s_rule():
    c = _Offsets()
    c.ack(OTHER, 3, 4)
    assert c.new_offset(OTHER) == 5


# --- 10. a table recovery that never gets its records ---------------------------
class _Recovery:
    _seek_offsets = Recovery._seek_offsets  # Faust's own: where a recovery reads from

    def __init__(self, started: float, highwater: int = 0, offset: int = -1) -> None:
        self.in_recovery = True
        self._recovery_started_at = started
        self.active_tps = {"changelog-0"}
        self.active_highwaters = {"changelog-0": highwater}
        self.active_offsets = {"changelog-0": offset}
        self._active_events_received_at: dict = {}


class _Thread:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def _ensure_consumer(self):
        calls = self.calls

        class Coordinator:
            def request_rejoin(self) -> None:
                calls.append("rejoin")

        class AIOConsumer:
            _coordinator = Coordinator()

        return AIOConsumer()

    async def call_thread(self, fun, *args):
        return fun(*args)


class _Consumer:
    def __init__(self) -> None:
        self.calls: list = []
        self._thread = _Thread(self.calls)

    async def seek_wait(self, offsets) -> None:
        self.calls.append(("seek", dict(offsets)))

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", sorted(tps)))


def _app(recovery):
    class Tables:
        pass

    class App:
        pass

    app = App()
    app.tables = Tables()
    app.tables.recovery = recovery
    app.consumer = _Consumer()
    return app


async def test_a_recovery_that_gets_nothing_is_sought_again_then_rebalanced_once_each():
    watch = faust_fixes.RecoveryWatch()
    wait = faust_fixes.STUCK_RECOVERY_SECONDS
    app = _app(_Recovery(started=100.0))
    assert await watch.check(app, 100.0 + wait - 1) is None  # a recovery may take a moment
    assert await watch.check(app, 100.0 + wait) == "seek"
    assert app.consumer.calls == [("seek", {"changelog-0": 0}), ("resume", ["changelog-0"])]
    assert await watch.check(app, 100.0 + 2 * wait - 1) is None
    assert await watch.check(app, 100.0 + 2 * wait) == "rebalance"
    assert app.consumer.calls[-1] == "rejoin"
    assert await watch.check(app, 100.0 + 10 * wait) is None  # then it is the new recovery's turn
    app.tables.recovery._recovery_started_at = 200.0  # the rebalance started a new recovery
    assert await watch.check(app, 200.0 + wait) == "seek"


async def test_a_recovery_that_gets_records_or_has_none_to_get_is_left_alone():
    watch = faust_fixes.RecoveryWatch()
    late = 100.0 + 10 * faust_fixes.STUCK_RECOVERY_SECONDS
    reading = _Recovery(started=100.0, highwater=5_000, offset=10)
    reading._active_events_received_at["changelog-0"] = 101.0  # slow, but its records come
    assert await watch.check(_app(reading), late) is None
    caught_up = _Recovery(started=100.0, highwater=7, offset=7)
    assert await watch.check(_app(caught_up), late) is None
    done = _Recovery(started=100.0)
    done.in_recovery = False
    assert await watch.check(_app(done), late) is None


# --------------------------------------------------------------------------- 11. the limiter's records first

LIMITER = TP(topic_name("blog.limiter"), 0)


class Buffers:
    """aiokafka's fetched records: partitions in the order their fetches came back,
    each keeping its place until empty (Fetcher.fetched_records' order)."""

    def __init__(self, sizes: list[tuple[TP, int]]):
        self.records = {tp: [(tp, i) for i in range(n)] for tp, n in sizes if n}

    async def fetch(self, partitions, timeout, most):
        out = {}
        for tp in list(self.records):
            if partitions and tp not in partitions:
                continue
            take = self.records[tp][: most if most is not None else None]
            del self.records[tp][: len(take)]
            if not self.records[tp]:
                del self.records[tp]
            if take:
                out[tp] = take
                if most is not None:
                    most -= len(take)
                    if most == 0:
                        break
        return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 300)), min_size=1, max_size=6),
       st.integers(0, 40), st.integers(1, 60))
def test_each_poll_takes_the_limiter_s_records_first_and_loses_none(stage_sizes, limiter_size, most):
    stages = [(TP(topic_name("blog.requests"), p), n) for p, n in stage_sizes]
    buffers = Buffers(stages + [(LIMITER, limiter_size)])  # fetched last, as it always is
    expected = {tp: list(records) for tp, records in buffers.records.items()}
    active = {tp for tp, _ in stages} | {LIMITER}
    seen: dict = defaultdict(list)
    while buffers.records:
        buffered = len(buffers.records.get(LIMITER, ()))
        poll = asyncio.run(faust_fixes.urgent_first(buffers.fetch, active, {LIMITER}, 1.0, most))
        assert sum(len(r) for r in poll.values()) <= most
        assert len(poll.get(LIMITER, ())) == min(buffered, most)  # nothing of the limiter's waits behind
        for tp, records in poll.items():
            seen[tp].extend(records)
    assert dict(seen) == expected  # every record once, in its partition's order


async def test_the_worker_s_consumer_reads_the_limiter_and_its_reply_topic_first():
    reply = TP(app.conf.reply_to, 0)
    buffers = Buffers([(STAGE, 80), (reply, 3), (LIMITER, 5)])
    thread = SimpleNamespace(app=app, consumer=SimpleNamespace(flow_active=True))

    async def fetched_records(partitions, timeout=0, max_records=None):
        return await buffers.fetch(partitions, timeout, max_records)

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(
        fetched_records=fetched_records, _closed=False,
        _subscriptions=SimpleNamespace(fetch_context=contextlib.nullcontext)), _closed=False)
    poll = await faust_fixes.fetch_urgent_first(thread, consumer, {STAGE, reply, LIMITER}, timeout=1.0, max_records=50)
    assert len(poll[LIMITER]) == 5 and len(poll[reply]) == 3 and len(poll[STAGE]) == 42


async def test_with_nothing_urgent_buffered_a_poll_is_faust_s_own():
    buffers = Buffers([(STAGE, 80)])
    calls = []

    async def fetch(partitions, timeout, most):
        calls.append((set(partitions), timeout, most))
        return await buffers.fetch(partitions, timeout, most)

    poll = await faust_fixes.urgent_first(fetch, {STAGE, LIMITER}, {LIMITER}, 1.0, 50)
    assert len(poll[STAGE]) == 50
    assert calls[-1] == ({STAGE, LIMITER}, 1.0, 50)  # it waits as long as Faust asked, for any partition


def test_partition_view_says_where_a_partitions_records_wait_and_never_raises():
    """Logged with each read-again of a stage partition (streams/pipeline/factory.py): Faust's flow control,
    the agent's queue and aiokafka's buffer for it, one line; a consumer it cannot read is said, not raised."""
    from types import SimpleNamespace

    from aiokafka.structs import TopicPartition

    tp = TopicPartition("run.blog.drafts", 3)
    state = SimpleNamespace(_position=41, paused=False, highwater=57)
    assignment = SimpleNamespace(state_value=lambda p: state)
    kafka = SimpleNamespace(_fetcher=SimpleNamespace(_records={}, _in_flight={1}),
                            _subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    consumer = SimpleNamespace(_active_partitions=set(), _buffered_partitions={tp}, _paused_partitions=set(),
                               flow_active=True, _thread=SimpleNamespace(_consumer=kafka))
    queue = SimpleNamespace(qsize=lambda: 3300)
    app = SimpleNamespace(consumer=consumer, topics=[SimpleNamespace(topics=(tp.topic,), _queue=queue),
                                                     SimpleNamespace(topics=("run.blog.requests",), _queue=None),
                                                     SimpleNamespace(_queue=queue)])  # a channel of no topic
    view = faust_fixes.partition_view(app, tp)
    assert "active=False held_for_full_queue=True" in view and "agent queue=3300" in view
    assert "position=41" in view and "highwater=57" in view and "fetch_in_flight=True" in view
    assert "not readable" in faust_fixes.partition_view(SimpleNamespace(), tp)
