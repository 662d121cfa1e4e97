"""An ask whose copy the broker never took (an outage longer than the producer's request timeout) is sent
again within seconds, not after `reask_seconds`, and never while its last copy still waits to leave
(streams/limiter/client.py, Budgets._ask_until_answered)."""
from __future__ import annotations

import asyncio

import pytest

from streams.limiter.client import Budgets


class Copies:
    """Stands in for `Budgets._ask`: each copy of the ask gets a reply promise and a delivery future."""

    def __init__(self, delivered: list[bool | None]) -> None:
        self.delivered = delivered  # per copy: did the broker take it? (None: not yet, it waits in the outbox)
        self.sent: list[tuple[asyncio.Future, asyncio.Future]] = []

    async def __call__(self, value: dict) -> tuple[asyncio.Future, asyncio.Future]:
        loop = asyncio.get_running_loop()
        promise = loop.create_future()
        return promise, await self.again(value, promise)

    async def again(self, value: dict, promise: asyncio.Future) -> asyncio.Future:
        """`Budgets._ask_again`: a copy answered through the first copy's promise."""
        delivery = asyncio.get_running_loop().create_future()
        ok = self.delivered[min(len(self.sent), len(self.delivered) - 1)]
        if ok is None:
            pass
        elif ok:
            delivery.set_result("offset")
        else:
            delivery.set_exception(TimeoutError("batch expired before it was sent"))
        self.sent.append((promise, delivery))
        return delivery


@pytest.fixture
def budgets(monkeypatch):
    b = Budgets()
    b.reask_seconds = 3600.0  # a re-send after silence would never come within the test
    monkeypatch.setattr(Budgets, "_forget", staticmethod(lambda promises: None))
    return b


async def answer_copy(copies: Copies, n: int, reply: dict) -> None:
    while len(copies.sent) < n:
        await asyncio.sleep(0.01)
    copies.sent[n - 1][0].set_result(reply)


async def test_a_copy_the_broker_never_took_is_sent_again_at_once_and_its_answer_counts(budgets):
    copies = Copies(delivered=[False, False, True])
    budgets._ask, budgets._ask_again = copies, copies.again
    asking = asyncio.ensure_future(budgets._ask_until_answered({"op": "ask", "ask_id": "a1"}))
    await asyncio.wait_for(answer_copy(copies, 3, {"ask_id": "a1", "grant_id": "g1"}), timeout=10)
    assert await asyncio.wait_for(asking, timeout=10) == {"ask_id": "a1", "grant_id": "g1"}
    assert len(copies.sent) == 3  # two lost copies, the third taken: no more sends after it


async def test_a_copy_the_broker_took_is_not_sent_again_while_the_ask_waits(budgets):
    copies = Copies(delivered=[True])
    budgets._ask, budgets._ask_again = copies, copies.again
    asking = asyncio.ensure_future(budgets._ask_until_answered({"op": "ask", "ask_id": "a2"}))
    while not copies.sent:
        await asyncio.sleep(0.01)
    for _ in range(50):  # the budget is full: the ask waits at the coordinator, nobody re-sends it
        await asyncio.sleep(0)
    assert len(copies.sent) == 1 and not asking.done()
    copies.sent[0][0].set_result({"ask_id": "a2", "grant_id": "g2"})
    assert (await asyncio.wait_for(asking, timeout=10))["grant_id"] == "g2"


async def test_no_copy_is_queued_behind_one_that_has_not_left_so_an_outage_queues_one_copy_per_ask(budgets):
    copies = Copies(delivered=[None, True])
    budgets._ask, budgets._ask_again = copies, copies.again
    budgets.reask_seconds = 0.01  # silence long enough for a re-send, many times over
    asking = asyncio.ensure_future(budgets._ask_until_answered({"op": "ask", "ask_id": "a3"}))
    while not copies.sent:
        await asyncio.sleep(0.01)
    for _ in range(5):  # rebalances while the broker is away: each would send every waiting ask again
        budgets.regroup()
        await asyncio.sleep(0.05)
    assert len(copies.sent) == 1 and not asking.done()  # the first copy still waits to leave
    copies.sent[0][1].set_exception(TimeoutError("batch expired before it was sent"))
    while len(copies.sent) < 2:  # it never left: the next copy goes
        await asyncio.sleep(0.01)
    copies.sent[0][0].set_result({"ask_id": "a3", "grant_id": "g3"})
    assert (await asyncio.wait_for(asking, timeout=10))["grant_id"] == "g3"


def test_asks_made_in_one_burst_are_sent_again_spread_out_not_in_one_burst():
    """10,000 asks made at once: their re-sends after silence spread over half of reask_seconds."""
    b = Budgets()
    waits = [b.reask_after() for _ in range(10_000)]
    assert min(waits) >= 0.75 * b.reask_seconds and max(waits) <= 1.25 * b.reask_seconds
    per_second = [0] * 16
    for w in waits:
        per_second[int(w - 0.75 * b.reask_seconds)] += 1
    assert max(per_second) < 1_000  # about 670 a second, where all 10,000 came in the same moment
