"""A rebalance that leaves blog.limiter on the same worker while a pass's writes are not acked.

Every rebalance revokes and assigns blog.limiter (Faust's eager protocol), so the coordinator is
deactivated and activated again on the same worker, and loads its book from the worker's own copy
of the table (`_table_items`), which Faust does not recover again from the changelog: it only
replays the records that landed since its last recovery. Every worker re-sends its waiting asks
after a rebalance, and the new epoch answers at once a re-ask of a grant it finds in that copy.
So the copy must hold only what the broker has: a grant of a pass the broker never acked, answered
from it, is a permit the next owner (recovering the changelog) does not count.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from streams.limiter import coordinator as coordinator_module
from streams.limiter.coordinator import Coordinator, budget_table
from streams.limiter.outbox import Outbox
from streams.limiter.own_loop import OwnLoop

pytestmark = pytest.mark.asyncio

ASK = {"op": "acquire", "ask_id": "A", "site_id": "s", "request_id": "r", "needs": {"replicate_requests": 1},
       "lane": "interactive", "worker": "w1"}
REPLY = {"Faust-Ag-ReplyTo": b"reply-w1", "Faust-Ag-CorrelationId": b"c1"}


class Table:
    """The worker's copy of blog-budgets (Faust's in-memory store), with the real changelog's serializers."""

    def __init__(self) -> None:
        self.data: dict = {}
        self.changelog_topic = budget_table.changelog_topic
        self.key_serializer = budget_table.key_serializer
        self.value_serializer = budget_table.value_serializer


class Broker:
    """`Outbox._produce` for the changelog: each record's ack waits until the test says how it went."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future] = []
        self.landed: list[bytes] = []  # the values of the records the broker acked

    async def produce(self, topic, key, value, partition, headers=None):
        ack = asyncio.get_running_loop().create_future()
        ack.add_done_callback(lambda f: None if f.exception() else self.landed.append(value or b""))
        self.acks.append(ack)
        return ack

    def fail_all(self) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_exception(TimeoutError("the broker restarted: no ack"))

    def ack_all(self) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_result(None)


@pytest.fixture
def worker(monkeypatch):
    table, broker = Table(), Broker()
    outbox = Outbox(OwnLoop("test-limiter"), table)
    outbox._produce = broker.produce  # type: ignore[method-assign]
    monkeypatch.setattr(coordinator_module, "outbox", outbox)

    async def table_items():
        return [(k, v) for k, v in table.data.items() if v is not None]

    monkeypatch.setattr(coordinator_module, "_table_items", table_items)
    monkeypatch.setattr(coordinator_module, "_start_nudge", lambda c, epoch: None)  # no Kafka: the test loads
    c = Coordinator()
    c.active = c.loaded = True
    c.last_tick = time.time()
    sent: list[dict] = []

    async def send(reply, value):
        sent.append(value)

    monkeypatch.setattr(c, "_send", send)
    return c, broker, sent


async def _until(condition) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


@pytest.mark.parametrize("fails", ["before the rebalance", "after the new epoch loaded"])
async def test_a_grant_the_broker_never_acked_is_not_answered_after_the_limiter_stays_on_this_worker(worker, fails):
    c, broker, sent = worker
    await c.handle(ASK, REPLY, None)
    passing = asyncio.ensure_future(c.run_once())  # grants A; its writes wait for the broker
    await _until(lambda: broker.acks)
    if fails == "before the rebalance":  # the pass fails; its writes wait in pending_writes
        broker.fail_all()
        with pytest.raises(TimeoutError):
            await passing
    c.deactivate()  # the rebalance: revoked, and assigned again to this worker
    c.activate()
    await c.load(None)  # the first event of the new epoch: this worker's copy of the table
    await c.handle(ASK, REPLY, None)  # every worker re-sends its waiting asks after a rebalance
    if sent:
        broker.fail_all()  # no pass left waiting 30 s for its acks
    assert sent == [], "answered with a grant no acked write holds: the next owner would not count it"
    if fails != "before the rebalance":
        broker.fail_all()
        with pytest.raises(TimeoutError):
            await passing
    # The broker is back: A is granted again, and answered once that grant is acked.
    written = len(broker.acks)
    again = asyncio.ensure_future(c.run_once())
    await _until(lambda: len(broker.acks) > written)
    assert sent == []
    broker.ack_all()
    await again
    assert {(answer["ask_id"], answer["grant_id"]) for answer in sent} == {("A", sent[0]["grant_id"])}
    assert any(sent[0]["grant_id"].encode() in value for value in broker.landed)  # the grant answered is acked


async def test_a_record_the_last_epoch_was_handling_does_not_move_the_new_epochs_reading(worker, monkeypatch):
    """The reader of the epoch that ended may be inside a record (an answer to a re-ask waiting for the
    producer: the broker restarting) while the new epoch loads and reads on from the table's `read_to`.
    What it handled must not become the new epoch's `handled_to`: the next pass would write a `read_to`
    past records the new epoch has not handled, and an owner after it would skip their effects."""
    from streams.limiter import agent

    c, broker, sent = worker
    monkeypatch.setattr(agent, "coordinator", c)
    await agent._handle(ASK, REPLY, 449)
    c.handled_to = 450  # records up to 450 handled
    passing = asyncio.ensure_future(c.run_once())
    await _until(lambda: broker.acks)
    broker.ack_all()
    await passing
    assert sent and broker.landed[-1] == b'{"offset":450}'  # A answered, read_to 450 written
    sending, producer_back = asyncio.Event(), asyncio.Event()

    async def send_when_the_broker_is_back(reply, value):
        sending.set()
        await producer_back.wait()
        sent.append(value)

    monkeypatch.setattr(c, "_send", send_when_the_broker_is_back)
    old_reader = asyncio.ensure_future(agent._handle(ASK, REPLY, 500))  # a re-ask after silence: answered again
    await sending.wait()
    c.deactivate()  # the rebalance leaves the limiter here
    c.activate()
    await c.load(None)
    assert c.resume_from == 451
    await agent._handle({"op": "alive", "worker": "w1", "route": "reply-w1"}, None, 451)  # the new epoch reads on
    producer_back.set()
    await old_reader
    assert c.handled_to == 451
    written = len(broker.acks)
    passing = asyncio.ensure_future(c.run_once())
    await _until(lambda: len(broker.acks) > written)
    broker.ack_all()
    await passing
    assert broker.landed[-1] == b'{"offset":451}'


LEASE = {"op": "lease", "ask_id": "L", "site_id": "s", "request_id": "", "needs": {"replicate_requests": 1},
         "lease": 3, "worker": "w1"}


async def test_a_pass_of_the_ended_epoch_that_fails_leaves_nothing_for_the_new_epoch_to_answer(worker, monkeypatch):
    """A pass of the epoch that ended fails after the new epoch loaded (its acks waited out the rebalance).
    Its answers were for the old book: carried into the new epoch, they answered whatever the new book had
    under the same ask id by then, such as a lease granted to the re-ask while the new epoch's first pass
    was being written, before any write held it."""
    c, broker, sent = worker
    durable_when_sent: list[bool] = []

    async def send(reply, value):
        durable_when_sent.append(any(value["grant_id"].encode() in landed for landed in broker.landed))
        sent.append(value)

    monkeypatch.setattr(c, "_send", send)
    await c.handle(LEASE, REPLY, None)  # a worker refilling its units: a lease at once, answered once written
    assert c.unsent == ["L"]
    old_pass = asyncio.ensure_future(c.run_once())
    await _until(lambda: broker.acks)
    c.deactivate()  # the rebalance leaves the limiter here
    c.activate()
    await c.load(None)
    broker.fail_all()  # the old epoch's pass fails now
    with pytest.raises(TimeoutError):
        await old_pass
    written = len(broker.acks)
    new_pass = asyncio.ensure_future(c.run_once())  # the new epoch's first pass (its marker)
    await _until(lambda: len(broker.acks) > written)
    await c.handle(LEASE, REPLY, None)  # the worker's re-ask after the rebalance: a new lease, not yet written
    broker.ack_all()
    await new_pass
    assert all(durable_when_sent), "answered with a lease no write held yet"
    written = len(broker.acks)
    next_pass = asyncio.ensure_future(c.run_once())
    await _until(lambda: len(broker.acks) > written)
    broker.ack_all()
    await next_pass
    assert [a["ask_id"] for a in sent] == ["L"] and durable_when_sent == [True]

