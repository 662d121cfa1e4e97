"""One site's backlog must not hold every other site's events on the worker (StageRunner, tenancy).

Stage events are acked in offset order per partition, so an event that waits
holds its partition's commit, and every event finished behind it stays in the
runner, counted against the read-ahead, until it is acked. A site at its cap of
requests in flight (its Wix down or slow, its slots all taken) with a backlog
used to hold its partition that way until its whole backlog was done: the other
sites' events finished behind it filled the read-ahead, and the worker stopped
reading every partition of the stage. Fakes as in test_runner.py; no timing luck.
"""
from __future__ import annotations

from collections import defaultdict

from streams.pipeline.runner import SitePolicy
from tests.pipeline.test_runner import Event, FakeStream, Message, Recorder, event, make_runner, run, settle, wait_until

__all__ = ["run"]  # the fixture, used by name


class TailStream(FakeStream):
    """A FakeStream whose `to_tail` produces events again at the end of their partitions (new offsets)."""

    def __init__(self, ends: dict[int, int]) -> None:
        super().__init__()
        self.ends = dict(ends)  # partition -> next offset
        self.moved: list[tuple[int, int]] = []  # (partition, offset) of the events produced again

    async def to_tail(self, events: list[Event]) -> None:
        for ev in events:
            tp = ev.message.tp
            self.moved.append(ev.id)
            offset = self.ends[tp.partition]
            self.ends[tp.partition] += 1
            self.feed([Event(ev.key, ev.value, Message(tp, offset, ev.message.key))])


async def test_a_site_at_its_cap_gives_way_instead_of_holding_every_partition_of_the_worker(run):
    """`capped` (cap 1) has six events at the head of partition 0, `busy` 34 quick ones behind them, and `small`
    three on partition 1, behind all of those in the fetch order. capped's first event runs for long (its Wix
    is down), then ends; the other five still wait for it. Before: capped held partition 0's commit until all
    six were done, the finished `busy` events filled the read-ahead of 10, nothing more was read, and small's
    events on another partition waited for capped's whole backlog. Now capped's waiting events go to the end
    of partition 0 (once each, in order): as soon as its running event ends, everything behind it is acked and
    the worker reads on."""
    handler = Recorder(gated=lambda ev: ev.key == b"capped")
    stream = TailStream({0: 40, 1: 3})
    runner = make_runner(handler, read_ahead=10,
                         policy=lambda site: SitePolicy(max_in_flight=1 if site == "capped" else 20))
    runner.to_tail = stream.to_tail
    run(runner, stream)
    stream.feed([event(0, o, "capped") for o in range(6)] + [event(0, o, "busy") for o in range(6, 40)]
                + [event(1, o, "small") for o in range(3)])
    await wait_until(lambda: handler.started[:1] == [(0, 0)] and handler.finished.count((0, 9)) == 1,
                     "capped's first event running, busy's first four done")
    await wait_until(lambda: len(stream.moved) == 5, "capped's five waiting events moved (the read-ahead is full)")

    handler.open((0, 0))  # capped's long call ends; its other five still wait for their turn
    await wait_until(lambda: handler.started_sites.count("small") == 3, "small's events on partition 1 ran")
    await wait_until(lambda: len(stream.acked(0)) == 40, "partition 0 acked up to capped's moved events")
    assert stream.acked(0) == list(range(40)) and stream.acked(1) == [0, 1, 2]
    assert stream.moved == [(0, o) for o in range(1, 6)]  # capped's waiting events, in their order
    assert handler.started_sites.count("capped") == 2  # the first, and the first of the moved ones (cap 1)

    for offset in range(40, 45):  # the moved events run in their order, each once
        await wait_until(lambda: (0, offset) in handler.started, f"capped's moved event at {offset} started")
        handler.open((0, offset))
    await wait_until(lambda: len(stream.acked(0)) == 45, "all of partition 0 acked")
    assert stream.acked(0) == list(range(45))
    assert len(set(handler.started)) == len(handler.started) == 6 + 34 + 3, "every event ran once"
    assert not {(0, o) for o in range(1, 6)} & set(handler.started), "the moved originals never ran"
    assert [o for p, o in handler.started if p == 0 and o not in range(6, 40)] == [0, 40, 41, 42, 43, 44]


async def test_a_site_at_its_cap_with_nothing_finished_behind_it_is_not_moved(run):
    """Moving events that hold nothing back would only send them round again."""
    handler = Recorder(gated=lambda ev: True)
    stream = TailStream({0: 30})
    runner = make_runner(handler, read_ahead=10,
                         policy=lambda site: SitePolicy(max_in_flight=2 if site == "capped" else 20))
    runner.GIVE_WAY_EVERY = 0.0  # look at every change
    runner.to_tail = stream.to_tail
    run(runner, stream)
    stream.feed([event(0, o, "capped") for o in range(5)] + [event(0, o, f"s{o % 3}") for o in range(5, 30)])
    await wait_until(lambda: len(handler.started) == 7 and handler.running["capped"] == 2,
                     "the read-ahead full, capped running its cap of 2, the others running")
    await settle(200)
    assert stream.moved == [] and runner.queued_by_site()["capped"] == 3


async def test_a_site_below_its_cap_is_not_moved(run):
    """A site whose events wait for the worker's concurrency, not for its own cap (nor its share of the
    stage's slots), starts them here soon: `hold` keeps 3 of the 10 slots, `wide` (cap 8) runs the other 7."""
    handler = Recorder(gated=lambda ev: ev.key in (b"wide", b"hold"))
    stream = TailStream({0: 30})
    runner = make_runner(handler, concurrency=10, read_ahead=16,
                         policy=lambda site: SitePolicy(max_in_flight=8 if site == "wide" else 20))
    runner.GIVE_WAY_EVERY = 0.0
    runner.to_tail = stream.to_tail
    run(runner, stream)
    stream.feed([event(0, o, "hold") for o in range(3)] + [event(0, o, "wide") for o in range(3, 11)]
                + [event(0, o, "busy") for o in range(11, 30)])
    await wait_until(lambda: stream.yielded >= 16 and handler.running["wide"] == 7 and handler.running["hold"] == 3
                     and "busy" in handler.started_sites and runner.queued_by_site().get("wide") == 1,
                     "full, wide running 7 of its 8, busy done behind")
    await settle(200)
    assert stream.moved == []


async def test_a_site_at_its_share_of_the_slots_gives_way_like_one_at_its_cap(run):
    """A site may run all of a stage's slots but a tenth (at least one), whatever its cap: at that share its
    waiting events hold the partition like a capped site's, and move to the end of it the same way."""
    handler = Recorder(gated=lambda ev: ev.key == b"wide")
    stream = TailStream({0: 30})
    runner = make_runner(handler, concurrency=4, read_ahead=12, policy=lambda site: SitePolicy(max_in_flight=1000))
    runner.GIVE_WAY_EVERY = 0.0
    runner.to_tail = stream.to_tail
    run(runner, stream)
    stream.feed([event(0, o, "wide") for o in range(8)] + [event(0, o, "busy") for o in range(8, 30)])
    await wait_until(lambda: len(stream.moved) == 5, "wide's five waiting events moved")
    assert handler.running["wide"] == 3 == runner.site_slots and stream.moved == [(0, o) for o in range(3, 8)]


async def test_events_that_could_not_be_moved_run_in_their_place(run):
    """The broker refusing the moved copies: the events go back to their site's line, in order, and run there."""
    handler = Recorder(gated=lambda ev: ev.key == b"capped")
    stream = TailStream({0: 20})
    refused: defaultdict[str, int] = defaultdict(int)

    async def broker_down(events: list[Event]) -> None:
        refused["calls"] += 1
        raise ConnectionError("the broker is away")

    runner = make_runner(handler, read_ahead=8, policy=lambda site: SitePolicy(max_in_flight=1 if site == "capped" else 20))
    runner.to_tail = broker_down
    run(runner, stream)
    stream.feed([event(0, o, "capped") for o in range(4)] + [event(0, o, "busy") for o in range(4, 20)])
    await wait_until(lambda: refused["calls"] >= 1, "a move was tried")
    assert runner.queued_by_site() == {"capped": 3}
    for offset in range(4):
        await wait_until(lambda: (0, offset) in handler.started, f"capped's event {offset} started in its place")
        handler.open((0, offset))
    await wait_until(lambda: stream.acked(0) == list(range(20)), "all acked in order")


async def test_the_workers_move_sends_each_record_as_it_was_to_its_own_partition_and_waits_for_every_ack(monkeypatch):
    """parking.to_tail, the hook factory.py gives the runners: same topic, partition, key, value and headers, in
    order, and it returns only once the broker acked every copy (the runner acks the originals after it)."""
    import asyncio

    from streams.app import app
    from streams.pipeline import parking

    sent, acks = [], []

    class Producer:
        async def send(self, topic, key, value, partition, timestamp, headers):
            sent.append((topic, key, value, partition, headers))
            acks.append(asyncio.get_running_loop().create_future())
            return acks[-1]

    monkeypatch.setattr(type(app), "producer", Producer())
    first = event(3, 7, "shop-1")
    first.message.topic, first.message.partition = "t.blog.requests", 3
    first.message.headers = [("blogstream-priority", b"bulk")]
    first.message.value = first.value
    second = event(3, 9, "shop-1")
    second.message.topic, second.message.partition, second.message.headers = "t.blog.requests", 3, None
    second.message.value = second.value
    moving = asyncio.ensure_future(parking.to_tail([first, second]))
    await wait_until(lambda: len(sent) == 2, "both copies handed to the producer")
    assert sent == [("t.blog.requests", b"shop-1", b"shop-1@3/7", 3, [("blogstream-priority", b"bulk")]),
                    ("t.blog.requests", b"shop-1", b"shop-1@3/9", 3, None)]
    acks[1].set_result(None)
    await settle()
    assert not moving.done(), "not before the broker acked every copy"
    acks[0].set_result(None)
    await asyncio.wait_for(moving, 5.0)
