"""StageRunner (streams/pipeline/runner.py) without Kafka: ordering of acks, fairness, caps, pauses, rebalances.

The runner only needs events with `.key`, `.value` and `.message` (`.tp`,
`.offset`, `.key`) and a stream whose `noack().events()` yields them and whose
`ack(event)` commits them; the fakes below record what the runner does.
Handlers that must finish in a chosen order wait on gates the test opens, so
no assertion depends on how fast anything runs.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pipeline.runner import SitePolicy, StageRunner

TIMEOUT = 10.0  # generous: every wait below is for a condition, never a fixed delay


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


@dataclass
class Message:
    tp: TP
    offset: int
    key: bytes


@dataclass
class Event:
    key: bytes
    value: bytes
    message: Message

    @property
    def id(self) -> tuple[int, int]:
        return (self.message.tp.partition, self.message.offset)


def event(partition: int, offset: int, site: str) -> Event:
    tp = TP("t.blog.requests", partition)
    return Event(site.encode(), f"{site}@{partition}/{offset}".encode(), Message(tp, offset, site.encode()))


class FakeStream:
    """`noack().events()` yields what the test feeds; `ack()` records (partition, offset)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.acks: list[tuple[int, int]] = []
        self.yielded = 0

    def noack(self) -> "FakeStream":
        return self

    async def events(self):
        while True:
            ev = await self.queue.get()
            self.yielded += 1
            yield ev

    async def ack(self, ev: Event) -> bool:
        self.acks.append(ev.id)
        return True

    def feed(self, events: list[Event]) -> None:
        for ev in events:
            self.queue.put_nowait(ev)

    def acked(self, partition: int) -> list[int]:
        return [offset for p, offset in self.acks if p == partition]


@dataclass
class Recorder:
    """A handler that records starts/finishes and concurrency, optionally waiting on a gate per event."""

    gated: Callable[[Event], bool] = lambda ev: False
    fail: Callable[[Event], bool] = lambda ev: False
    delay: Callable[[Event], float] = lambda ev: 0.0
    started: list[tuple[int, int]] = field(default_factory=list)
    started_sites: list[str] = field(default_factory=list)
    finished: list[tuple[int, int]] = field(default_factory=list)
    gates: dict[tuple[int, int], asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    running: Counter = field(default_factory=Counter)
    max_running: Counter = field(default_factory=Counter)
    running_total: int = 0
    max_running_total: int = 0

    async def __call__(self, ev: Event) -> None:
        site = ev.key.decode()
        self.started.append(ev.id)
        self.started_sites.append(site)
        self.running[site] += 1
        self.running_total += 1
        self.max_running[site] = max(self.max_running[site], self.running[site])
        self.max_running_total = max(self.max_running_total, self.running_total)
        try:
            if self.gated(ev):
                await self.gates[ev.id].wait()
            pause = self.delay(ev)
            if pause:
                await asyncio.sleep(pause)
            if self.fail(ev):
                raise RuntimeError(f"handler bug on {ev.id}")
            self.finished.append(ev.id)
        finally:
            self.running[site] -= 1
            self.running_total -= 1

    def open(self, *ids: tuple[int, int]) -> None:
        for i in ids:
            self.gates[i].set()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.002)


async def settle(rounds: int = 20) -> None:
    """Let every ready task run; used only before asserting that something did NOT happen."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@pytest.fixture
async def run():
    """Start a runner consuming a FakeStream; everything is cancelled at the end of the test."""
    started: list[tuple[StageRunner, asyncio.Task]] = []

    def start(runner: StageRunner, stream: FakeStream) -> StageRunner:
        started.append((runner, asyncio.ensure_future(runner.consume(stream))))
        return runner

    yield start
    for runner, task in started:
        pending = {task, *runner._tasks, *(t for t in (runner._dispatcher, runner._watchdog, runner._parker,
                                                        runner._mover) if t)}
        # Cancel until everything is gone: on Python 3.11 asyncio.wait_for (the
        # dispatcher's idle wait) swallows a cancel that coincides with its wake-up.
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
            pending |= {t for t in runner._tasks if not t.done()}


def make_runner(handler: Recorder, *, concurrency: int = 50, read_ahead: int = 10_000,
                policy: Callable[[str], SitePolicy] = lambda site: SitePolicy(), name: str = "test") -> StageRunner:
    runner = StageRunner(name, handler, concurrency=concurrency, read_ahead=read_ahead, policy=policy)
    # Not the Faust consumer's hooks (streams.pipeline.stage sets them for the real runners): these fakes
    # feed partitions in any order; the gap tests below give their own.
    runner.expected_start = lambda tp: None
    runner.rewind = None
    runner.to_tail = None  # the worker's produces to Kafka: tests/pipeline/test_give_way.py gives its own
    runner.park = None  # the worker's (streams/pipeline/deps.py) parks in Postgres: tests/pipeline/test_parking.py
    runner.load_policies = None
    runner.STALL_CHECK_EVERY = 3600.0  # the stall tests call check_stalls() with the time they choose
    return runner


# --------------------------------------------------------------------------- ack order


async def test_acks_follow_offset_order_when_handlers_finish_in_reverse(run):
    handler = Recorder(gated=lambda ev: True)
    stream = FakeStream()
    run(make_runner(handler), stream)
    stream.feed([event(0, offset, "site-a") for offset in range(10)])
    await wait_until(lambda: len(handler.started) == 10, "all ten events started")

    # Everything but the first finishes, last offset first: nothing may be acked yet.
    for offset in range(9, 0, -1):
        handler.open((0, offset))
        await wait_until(lambda: (0, offset) in handler.finished, f"offset {offset} finished")
    await settle()
    assert stream.acks == []

    handler.open((0, 0))
    await wait_until(lambda: len(stream.acks) == 10, "all ten acked")
    assert stream.acked(0) == list(range(10))


async def test_acks_are_in_offset_order_per_partition_with_random_finish_times(run):
    rng = random.Random(7)
    delays = {(p, o): rng.uniform(0.0, 0.03) for p in range(3) for o in range(40)}
    handler = Recorder(delay=lambda ev: delays[ev.id])
    stream = FakeStream()
    run(make_runner(handler, concurrency=60), stream)
    stream.feed([event(p, o, f"site-{(p + o) % 5}") for o in range(40) for p in range(3)])

    await wait_until(lambda: len(stream.acks) == 120, "all 120 acked")
    finished_order = {p: [o for q, o in handler.finished if q == p] for p in range(3)}
    assert any(order != sorted(order) for order in finished_order.values()), "handlers did finish out of order"
    for p in range(3):
        assert stream.acked(p) == list(range(40)), f"partition {p} acked out of order"
    assert len(set(stream.acks)) == 120  # each event acked exactly once


async def test_a_raising_handler_blocks_later_acks_of_its_partition_only(run):
    handler = Recorder(fail=lambda ev: ev.id == (0, 2))
    stream = FakeStream()
    run(make_runner(handler), stream)
    stream.feed([event(0, o, "site-a") for o in range(6)] + [event(1, o, "site-b") for o in range(6)])

    await wait_until(lambda: len(handler.started) >= 12, "every event started")
    await wait_until(lambda: len(handler.finished) == 11, "every other handler finished")
    await wait_until(lambda: len(stream.acked(1)) == 6, "the healthy partition acked")
    await settle()
    assert stream.acked(0) == [0, 1], "nothing at or after the failed offset may be acked"
    assert stream.acked(1) == list(range(6))
    assert {(0, 3), (0, 4), (0, 5)} <= set(handler.finished)  # later events did run; they just stay unacked


async def test_an_event_whose_handler_raised_is_tried_again_and_then_acked_in_order(run):
    attempts: Counter = Counter()

    def fail_first_time(ev: Event) -> bool:
        attempts[ev.id] += 1
        return ev.id == (0, 2) and attempts[ev.id] == 1

    handler = Recorder(fail=fail_first_time)
    stream = FakeStream()
    run(make_runner(handler), stream)
    stream.feed([event(0, o, "site-a") for o in range(6)])

    await wait_until(lambda: len(stream.acks) == 6, "all six acked after the retry")
    assert stream.acked(0) == list(range(6))
    assert attempts[(0, 2)] == 2 and all(attempts[(0, o)] == 1 for o in (0, 1, 3, 4, 5))


# --------------------------------------------------------------------------- caps and fairness


async def test_per_site_cap_and_worker_concurrency_are_never_exceeded(run):
    caps = {"big": 3, "mid": 2, "small": 5}
    rng = random.Random(11)
    delays = {}
    handler = Recorder(delay=lambda ev: delays.setdefault(ev.id, rng.uniform(0.0, 0.01)))
    stream = FakeStream()
    run(make_runner(handler, concurrency=8, policy=lambda site: SitePolicy(max_in_flight=caps[site])), stream)
    sites = [site for _ in range(60) for site in caps]
    stream.feed([event(i % 4, i, site) for i, site in enumerate(sites)])

    await wait_until(lambda: len(stream.acks) == 180, "all 180 acked")
    assert handler.max_running["big"] <= 3
    assert handler.max_running["mid"] <= 2
    assert handler.max_running["small"] <= 5
    assert handler.max_running_total <= 8
    assert handler.max_running["big"] == 3, "the cap was actually reached (the test exercised it)"


async def test_a_small_site_behind_a_big_backlog_in_the_same_partition_starts_at_once(run):
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler, concurrency=1)
    # Offsets 0..999 are the big site's, 1000..1004 the small site's: one partition.
    for o in range(1000):
        runner.add(event(0, o, "big"))
    for o in range(1000, 1005):
        runner.add(event(0, o, "small"))
    run(runner, stream)

    await wait_until(lambda: len(handler.started) >= 20, "twenty starts")
    first = handler.started_sites[:10]
    assert first.count("small") == 5, f"the small site's 5 events start within the first 10 starts: {first}"
    await wait_until(lambda: len(stream.acks) == 1005, "all acked")
    assert stream.acked(0) == list(range(1005))


async def test_bulk_events_leave_slots_for_interactive_ones(run):
    """Bulk events (a header says so) start only while a tenth of the slots stays free: an interactive
    event arriving behind a bulk backlog whose calls all wait starts at once."""
    handler = Recorder(gated=lambda ev: ev.key == b"backfill")
    stream = FakeStream()
    runner = run(make_runner(handler, concurrency=10, policy=lambda site: SitePolicy(max_in_flight=100)), stream)
    bulk = [event(0, n, "backfill") for n in range(30)]
    for ev in bulk:
        ev.message.headers = [("blogstream-priority", b"bulk")]
    stream.feed(bulk)
    await wait_until(lambda: len(handler.started) == 9, "nine bulk events started")
    await settle()
    assert len(handler.started) == 9 == runner.bulk_concurrency  # the tenth slot is kept
    stream.feed([event(1, 0, "shop")])
    await wait_until(lambda: (1, 0) in handler.finished, "the interactive event ran")
    assert len(handler.started) == 10


@pytest.mark.parametrize("weights", [
    {"heavy": 3.0, "light": 1.0, "half": 0.5},
    {"heavy": 0.3, "light": 0.1, "half": 0.05},  # all under one credit a turn: the skipped rounds count too
    {"heavy": 0.06, "light": 0.02, "half": 0.01},
])
async def test_weights_share_starts_in_proportion(run, weights):
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler, concurrency=1, policy=lambda site: SitePolicy(weight=weights[site]))
    for o in range(300):
        runner.add(event(0, 3 * o, "heavy"))
        runner.add(event(0, 3 * o + 1, "light"))
        runner.add(event(0, 3 * o + 2, "half"))
    run(runner, stream)

    await wait_until(lambda: len(handler.started) >= 90, "ninety starts")
    counts = Counter(handler.started_sites[:90])
    # 6 : 2 : 1 of 90 starts = 60 : 20 : 10 (deficit round-robin is exact up to one turn)
    assert abs(counts["heavy"] - 60) <= 3 and abs(counts["light"] - 20) <= 2 and abs(counts["half"] - 10) <= 2, counts


async def test_a_low_weight_site_gets_the_free_slots_at_once_when_nobody_else_wants_them(run):
    """Weights share contested slots; they never leave slots idle (work-conserving, NOTES.md: Inngest #4345).
    A site of the lowest weight the controls allow (0.01), alone or next to a site held by its own cap,
    starts its events as soon as they are read, not one per ~50 s of idle dispatcher waits."""
    weights = {"low": 0.01, "capped": 1.0}
    handler = Recorder(gated=lambda ev: True)  # nothing finishes: no release wakes the dispatcher
    stream = FakeStream()
    run(make_runner(handler, concurrency=50,
                    policy=lambda site: SitePolicy(weight=weights[site], max_in_flight=2 if site == "capped" else 20)),
        stream)
    stream.feed([event(0, o, "capped") for o in range(5)] + [event(1, o, "low") for o in range(5)])
    await wait_until(lambda: handler.started_sites.count("low") == 5, "the low-weight site's five events started",
                     timeout=3.0)
    assert handler.started_sites.count("capped") == 2


async def test_without_a_parking_lot_a_paused_site_starts_nothing_until_resumed(run):
    paused = {"held": True}
    handler = Recorder()
    stream = FakeStream()
    run(make_runner(handler, policy=lambda site: SitePolicy(paused=paused.get(site, False))), stream)
    # The paused site's events come first in partition 0: the free site's may run, but not be acked past them.
    stream.feed([event(0, o, "held") for o in range(3)] + [event(0, o, "free") for o in range(3, 8)])
    stream.feed([event(1, o, "free") for o in range(4)])

    await wait_until(lambda: len(handler.finished) == 9, "the free site's events finished")
    await wait_until(lambda: len(stream.acked(1)) == 4, "partition 1 acked")
    await settle()
    assert "held" not in handler.started_sites
    assert stream.acked(0) == []  # offsets 3..7 finished but sit behind the paused 0..2

    paused["held"] = False  # the runner re-reads policies at least every second
    await wait_until(lambda: len(stream.acked(0)) == 8, "partition 0 acked after resume")
    assert stream.acked(0) == list(range(8))
    assert handler.started_sites.count("held") == 3


async def test_read_ahead_bounds_unacked_events(run):
    read_ahead = 10
    handler = Recorder(gated=lambda ev: True)
    stream = FakeStream()
    runner = run(make_runner(handler, concurrency=100, read_ahead=read_ahead), stream)
    stream.feed([event(o % 2, o // 2, f"site-{o % 3}") for o in range(50)])

    await wait_until(lambda: len(handler.started) == read_ahead, "read_ahead events started")
    await settle()
    assert len(handler.started) == read_ahead
    assert stream.yielded <= read_ahead + 1  # the one in hand waits for room before it is added
    assert sum(runner.queued_by_site().values()) + sum(runner.running_by_site().values()) <= read_ahead

    # Finish events one by one, in offset order per partition: the window slides, never grows.
    for o in range(50):
        ev_id = (o % 2, o // 2)
        await wait_until(lambda: ev_id in handler.started, f"{ev_id} started")
        assert len(handler.started) - len(stream.acks) <= read_ahead
        handler.open(ev_id)
        await wait_until(lambda: ev_id in stream.acks, f"{ev_id} acked")
    assert sorted(stream.acks) == sorted({(o % 2, o // 2) for o in range(50)})


async def test_read_ahead_bounds_the_bytes_of_unacked_records_too(run):
    """Records of 1 to 3 KB (long articles) against 10 KB of read-ahead: the runner stops reading once the
    records it holds reach it, however few they are (past it by one record at most), and a record larger
    than the bound alone still runs."""
    sizes = [1000, 3000, 2000, 1000, 3000, 2000, 1000, 3000, 50_000, 1000, 2000]
    handler = Recorder(gated=lambda ev: True)
    stream = FakeStream()
    runner = StageRunner("test", handler, concurrency=100, read_ahead=10_000, read_ahead_bytes=10_000)
    runner.expected_start, runner.rewind, runner.to_tail = (lambda tp: None), None, None
    run(runner, stream)
    events = [event(0, o, f"site-{o % 3}") for o in range(len(sizes))]
    for ev, size in zip(events, sizes):
        ev.value = bytes(size)
    stream.feed(events)

    await wait_until(lambda: len(handler.started) == 5, "the records up to 10 KB started")
    await settle()
    assert handler.started == [(0, o) for o in range(5)] and runner._buffered_bytes == 10_000
    for o in range(len(sizes)):  # finished in order: the window slides by bytes, never past the bound
        await wait_until(lambda: (0, o) in handler.started, f"(0, {o}) started")
        read = len(handler.started)  # each is read only while those before it hold less than the bound
        assert sum(sizes[o:read - 1]) < 10_000, "past the bound by one record at most"
        handler.open((0, o))
        await wait_until(lambda: (0, o) in stream.acks, f"(0, {o}) acked")
    assert stream.acked(0) == list(range(len(sizes))) and runner._buffered_bytes == 0


async def test_forget_drops_unstarted_events_of_revoked_partitions(run):
    handler = Recorder(gated=lambda ev: ev.id == (0, 0))
    stream = FakeStream()
    runner = run(make_runner(handler, concurrency=1), stream)
    stream.feed([event(0, o, "s0") for o in range(5)] + [event(1, o, "s1") for o in range(5)])
    await wait_until(lambda: handler.started == [(0, 0)], "the first event of partition 0 running")

    runner.forget({TP("t.blog.requests", 0)})
    assert runner.queued_by_site() == {"s1": 5}
    handler.open((0, 0))  # the call in flight finishes, but the partition is not ours to ack any more

    await wait_until(lambda: len(stream.acked(1)) == 5, "partition 1 acked")
    await settle()
    assert handler.started == [(0, 0)] + [(1, o) for o in range(5)]
    assert stream.acked(0) == []
    assert runner.queued_by_site() == {}
    assert runner._buffered == 0 and runner._buffered_bytes == 0, "forgotten events no longer count against read_ahead"


# --------------------------------------------------------------------------- offsets Faust skipped


async def test_an_offset_faust_never_delivered_is_read_again_not_skipped(run):
    """After a rebalance Faust was seen to hand over a partition from offset 1 with offset 0 uncommitted."""
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler)
    rewinds = []

    async def rewind(tp, offset):
        rewinds.append((tp.partition, offset))
        stream.feed([event(3, o, "site-a") for o in range(offset, 3)])  # the partition, read again

    runner.expected_start = lambda tp: 0  # nothing committed: the log starts at 0
    runner.rewind = rewind
    run(runner, stream)
    stream.feed([event(3, 1, "site-a"), event(3, 2, "site-a")])  # offset 0 skipped
    await wait_until(lambda: stream.acked(3) == [0, 1, 2], "offsets 0, 1, 2 acked in order")
    assert rewinds == [(3, 0)]  # one rewind; the events past the gap were dropped, not acked
    assert sorted(handler.finished) == [(3, 0), (3, 1), (3, 2)]


async def test_a_gap_in_the_middle_is_read_again_and_an_offset_that_never_comes_is_given_up(run):
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler)
    runner.REWIND_EVERY = 0.0
    rewinds = []

    async def rewind(tp, offset):
        rewinds.append(offset)
        stream.feed([event(0, 7, "site-a")])  # offset 5 and 6 are gone for good (say, retention)

    runner.expected_start = lambda tp: 4
    runner.rewind = rewind
    run(runner, stream)
    stream.feed([event(0, 4, "site-a"), event(0, 7, "site-a")])
    await wait_until(lambda: stream.acked(0) == [4, 7], "gave up on 5 and 6 after the rewinds")
    assert rewinds == [5] * runner.MAX_REWINDS


async def test_offsets_delivered_again_after_a_seek_are_not_run_twice(run):
    """Faust hands records over again after a seek back (its own after a rebalance, or a rewind)."""
    handler = Recorder(gated=lambda ev: ev.id == (0, 1))
    stream = FakeStream()
    runner = make_runner(handler)
    runner.expected_start = lambda tp: 0
    run(runner, stream)
    stream.feed([event(0, o, "site-a") for o in range(3)])
    await wait_until(lambda: sorted(handler.started) == [(0, 0), (0, 1), (0, 2)], "0, 1, 2 started")
    stream.feed([event(0, o, "site-a") for o in range(4)])  # 0 done, 1 running, 2 done: again; 3 is new
    await wait_until(lambda: (0, 3) in handler.finished, "the new offset 3 done")
    handler.open((0, 1))
    await wait_until(lambda: stream.acked(0) == [0, 1, 2, 3], "each offset acked once, in order")
    assert sorted(handler.started) == [(0, 0), (0, 1), (0, 2), (0, 3)]


async def test_offsets_below_the_commit_are_not_run_again(run):
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler)
    runner.expected_start = lambda tp: 5  # committed: 0 to 4 are done
    run(runner, stream)
    stream.feed([event(0, o, "site-a") for o in range(3, 7)])
    await wait_until(lambda: stream.acked(0) == [5, 6], "5 and 6 acked")
    await settle()
    assert sorted(handler.started) == [(0, 5), (0, 6)]


# --------------------------------------------------------------------------- stalled partitions


def stall_hooks(runner: StageRunner, stream: FakeStream, ends: dict[int, int], rewinds: list) -> None:
    """Partitions 2 and 5 of the runner's topic (and one of another topic) with the given log ends."""
    async def rewind(tp, offset):
        rewinds.append((tp.partition, offset))
        stream.feed([event(tp.partition, o, "site-a") for o in range(offset, ends[tp.partition])])

    runner.topic = "t.blog.requests"
    runner.expected_start = lambda tp: 0
    runner.rewind = rewind
    runner.assigned_partitions = lambda: [TP("t.blog.requests", 2), TP("t.blog.requests", 5), TP("t.blog.drafts", 2)]
    runner.end_offset = lambda tp: ends[tp.partition]


async def test_a_partition_with_records_waiting_but_none_delivered_is_read_again(run):
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler)
    rewinds: list = []
    stall_hooks(runner, stream, {2: 4, 5: 0}, rewinds)
    run(runner, stream)
    stream.feed([event(2, 0, "site-a")])  # offsets 1 to 3 vanish on the way, nothing after them shows a gap
    await wait_until(lambda: stream.acked(2) == [0], "offset 0 acked")
    now = time.monotonic()
    assert runner.check_stalls(now + runner.STALL_SECONDS / 2) == []  # not stalled yet
    assert runner.check_stalls(now + runner.STALL_SECONDS + 1) == [(TP("t.blog.requests", 2), 1)]
    await wait_until(lambda: stream.acked(2) == [0, 1, 2, 3], "1 to 3 read again and acked in order")
    assert rewinds == [(2, 1)]  # partition 5 has nothing waiting; the drafts partition is not ours
    assert runner.check_stalls(now + 10 * runner.STALL_SECONDS) == []  # caught up


async def test_the_stall_clock_starts_when_records_arrive_not_when_the_partition_went_quiet(run):
    stream = FakeStream()
    runner = make_runner(Recorder())
    rewinds: list = []
    ends = {2: 0, 5: 0}
    stall_hooks(runner, stream, ends, rewinds)
    run(runner, stream)
    assert runner.check_stalls(100.0) == []  # quiet for ever, nothing waiting
    ends[2] = 3  # records arrive
    assert runner.check_stalls(100.0 + runner.STALL_SECONDS - 1) == []
    assert runner.check_stalls(100.0 + runner.STALL_SECONDS + 1) == [(TP("t.blog.requests", 2), 0)]
    assert runner.check_stalls(100.0 + runner.STALL_SECONDS + 2) == []  # one try per STALL_SECONDS


async def test_a_runner_with_full_read_ahead_is_not_stalled_it_stopped_reading(run):
    handler = Recorder(gated=lambda ev: True)
    stream = FakeStream()
    runner = make_runner(handler, read_ahead=1)
    rewinds: list = []
    stall_hooks(runner, stream, {2: 5, 5: 0}, rewinds)
    run(runner, stream)
    stream.feed([event(2, o, "site-a") for o in range(5)])
    await wait_until(lambda: handler.started == [(2, 0)], "offset 0 running, the rest not read")
    assert runner.check_stalls(time.monotonic() + 10 * runner.STALL_SECONDS) == []


# --------------------------------------------------------------------------- retries after an outage


async def test_the_first_event_that_works_again_ends_every_retry_wait(run, monkeypatch):
    """An outage: every event fails and waits (here: an hour). The broker comes back; the next event that
    works ends the others' waits at once, instead of one back-off later."""
    import streams.pipeline.runner as runner_module
    from streams.pipeline.retries import RetryPauses

    pauses = RetryPauses(wake_every=0.0)
    monkeypatch.setattr(runner_module, "RETRIES", pauses)
    monkeypatch.setattr(runner_module, "retry_delay", lambda failures: 3600.0)
    outage = {"on": True}
    handler = Recorder(fail=lambda ev: outage["on"])
    stream = FakeStream()
    run(make_runner(handler), stream)
    stream.feed([event(0, o, f"site-{o % 3}") for o in range(5)])
    await wait_until(lambda: pauses.waiting == 5, "all five failed and waiting")

    outage["on"] = False
    stream.feed([event(1, 0, "site-new")])
    await wait_until(lambda: len(stream.acks) == 6, "the five retried at once after the first success")
    assert stream.acked(0) == list(range(5)) and pauses.waiting == 0


# --------------------------------------------------------------------------- blogstream_site_queued


def queued_gauge(stage: str) -> dict[str, float]:
    """The series of blogstream_site_queued this stage has: site -> value."""
    from streams import metrics

    return {sample.labels["site"]: sample.value for family in metrics.registry.collect()
            if family.name == "blogstream_site_queued" for sample in family.samples
            if sample.labels["stage"] == stage}


async def test_site_queued_is_what_the_runner_holds_and_a_site_without_a_line_has_no_series(run):
    """It showed a revoked partition's events for good (another worker runs them now), and kept a
    series at 0 for every site ever seen: thousands of sites, thousands of series per stage and worker."""
    stage = "queued-after-revoke"
    handler = Recorder(gated=lambda ev: ev.id == (0, 0))
    stream = FakeStream()
    runner = run(make_runner(handler, concurrency=1, name=stage), stream)
    stream.feed([event(0, o, "s0") for o in range(5)] + [event(1, o, "s1") for o in range(3)])
    await wait_until(lambda: handler.started == [(0, 0)] and stream.yielded == 8, "all read, the first running")
    assert queued_gauge(stage) == runner.queued_by_site() == {"s0": 4, "s1": 3}

    runner.forget({TP("t.blog.requests", 0)})
    assert queued_gauge(stage) == runner.queued_by_site() == {"s1": 3}

    handler.open((0, 0))
    await wait_until(lambda: len(stream.acked(1)) == 3, "partition 1 done")
    assert queued_gauge(stage) == runner.queued_by_site() == {}


async def test_site_queued_counts_an_event_put_back_in_its_line(run, monkeypatch):
    """An event that failed goes back to its line after its pause: the gauge counts it again."""
    import streams.pipeline.runner as runner_module

    class GatedRetries:
        def __init__(self) -> None:
            self.waiting, self.go = asyncio.Event(), asyncio.Event()

        async def pause(self, delay: float) -> None:
            self.waiting.set()
            await self.go.wait()

        def succeeded(self) -> None:
            pass

    retries = GatedRetries()
    monkeypatch.setattr(runner_module, "RETRIES", retries)
    stage = "queued-after-requeue"
    paused = {"a": False}
    handler = Recorder(fail=lambda ev: True)
    stream = FakeStream()
    runner = run(make_runner(handler, name=stage, policy=lambda site: SitePolicy(paused=paused[site])), stream)
    stream.feed([event(0, 0, "a")])
    await asyncio.wait_for(retries.waiting.wait(), TIMEOUT)
    assert queued_gauge(stage) == runner.queued_by_site() == {}

    paused["a"] = True  # it stays in its line once back (this runner has no parking lot)
    retries.go.set()
    await wait_until(lambda: runner.queued_by_site() == {"a": 1}, "the event back in its line")
    assert queued_gauge(stage) == {"a": 1}


# --------------------------------------------------------------------------- one site's share of the slots

@pytest.mark.parametrize("concurrency", [2, 3, 10, 25])
async def test_a_site_whose_calls_hang_leaves_slots_for_a_site_that_comes_later(run, concurrency):
    """Whatever its cap, one site runs at most all slots but a tenth (at least one) of a stage: a site whose
    calls hang (its Wix retrying) cannot take the whole stage, and a site that comes later starts at once."""
    handler = Recorder(gated=lambda ev: ev.key == b"slow")
    stream = FakeStream()
    runner = run(make_runner(handler, concurrency=concurrency, policy=lambda site: SitePolicy(max_in_flight=1000)),
                 stream)
    stream.feed([event(0, n, "slow") for n in range(3 * concurrency)])
    share = concurrency - max(1, concurrency // 10)
    await wait_until(lambda: len(handler.started) == share, f"{share} of the slow site's events started")
    await settle()
    assert len(handler.started) == share == runner.site_slots
    stream.feed([event(1, 0, "shop")])
    await wait_until(lambda: (1, 0) in handler.finished, "the later site's event ran")


async def test_with_one_slot_a_lone_bulk_event_still_starts(run):
    """One slot keeps nothing back: a bulk event (or a lone site) alone takes it (it waited for good before)."""
    handler = Recorder()
    stream = FakeStream()
    run(make_runner(handler, concurrency=1), stream)
    bulk = [event(0, n, "backfill") for n in range(3)]
    for ev in bulk:
        ev.message.headers = [("blogstream-priority", b"bulk")]
    stream.feed(bulk)
    await wait_until(lambda: len(stream.acks) == 3, "the three bulk events acked")


@given(concurrency=st.integers(1, 12), sites=st.lists(st.tuples(st.integers(1, 15), st.booleans(), st.booleans()),
                                                       min_size=1, max_size=5),
       events=st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=60),
       steps=st.lists(st.booleans(), max_size=200))
@settings(max_examples=300, deadline=None)
def test_starts_keep_every_limit_and_leave_no_startable_event_waiting(concurrency, sites, events, steps):
    """Any stage size, sites (cap, weight under one or not, paused), bulk or interactive events, starts and ends
    in any order: the stage, each site's cap and its share of the slots are never exceeded; whenever nothing
    starts, every waiting site is paused, at its cap or share, or only bulk while the interactive slots are
    what is left; and with everything run to its end, every event of a site not paused starts."""
    policies = {f"s{i}": SitePolicy(weight=0.3 if light else 1.0, max_in_flight=cap, paused=paused and i > 0)
                for i, (cap, light, paused) in enumerate(sites)}
    runner = make_runner(Recorder(), concurrency=concurrency, policy=lambda site: policies[site])
    for offset, (index, bulk) in enumerate(events):
        ev = event(0, offset, f"s{index % len(sites)}")
        if bulk:
            ev.message.headers = [("blogstream-priority", b"bulk")]
        runner.add(ev)
    running: list = []

    def start() -> bool:
        entry = runner._next()
        if entry is None:
            return False
        runner._running[entry.site_id] = runner._running.get(entry.site_id, 0) + 1
        runner._running_total += 1
        running.append(entry)
        site_running = runner._running[entry.site_id]
        assert runner._running_total <= concurrency
        assert site_running <= min(policies[entry.site_id].max_in_flight, runner.site_slots)
        assert not policies[entry.site_id].paused
        return True

    def check_idle() -> None:
        if runner._running_total >= concurrency:
            return
        for site_id, line in runner._lines.items():
            blocked = (policies[site_id].paused or runner.at_cap(site_id)
                       or (line[0].bulk and runner._running_total >= runner.bulk_concurrency))
            assert blocked, f"{site_id} waits with a free slot: {runner._running}, {concurrency}"

    for step in steps:
        if step or not running:
            if not start():
                check_idle()
        else:
            runner._release(running.pop(0))
    while True:  # run everything to its end
        while start():
            pass
        check_idle()
        if not running:
            break
        runner._release(running.pop(0))
    assert all(policies[site].paused for site in runner._lines), "only paused sites' events are left"
