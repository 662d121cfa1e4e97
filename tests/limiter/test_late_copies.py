"""A copy of an ask that comes after its answer: answered with the same grant, never granted again.

The coordinator keeps its answers for ANSWERS_KEEP_SECONDS so that a copy of an ask already
granted (a worker re-sends its waiting asks after every rebalance) gets the same grant. A grant
made while the broker is away is answered only once its pass is written, which can be more than
that minute later; the rebalance that follows the broker's return then makes every worker send
its asks again, right after their answers.
"""
from __future__ import annotations

import time

import pytest

from streams.limiter.coordinator import ANSWERS_KEEP_SECONDS, Coordinator

pytestmark = pytest.mark.asyncio

ASK = {"op": "acquire", "ask_id": "A", "site_id": "s", "request_id": "r", "slot_limit": 5, "worker": "w1",
       "needs": {"openai_requests": 1, "openai_tokens": 500}, "lane": "interactive"}
REPLY = {"Faust-Ag-ReplyTo": b"reply-w1", "Faust-Ag-CorrelationId": b"c1"}


async def test_a_copy_after_an_answer_that_waited_out_a_broker_outage_gets_the_same_grant(monkeypatch):
    c = Coordinator()
    c.active = c.loaded = True
    c.last_tick = time.time()
    sent: list[dict] = []
    broker_up = [False]

    async def send(reply, value):
        sent.append(value)

    async def persist(writes):
        if not broker_up[0]:
            raise ConnectionError("broker away")

    monkeypatch.setattr(c, "_send", send)
    monkeypatch.setattr(c, "_persist", persist)
    await c.handle(ASK, REPLY, None)
    with pytest.raises(ConnectionError):
        await c.run_once()  # granted, not written: not answered
    c.answers["A"].made_at -= ANSWERS_KEEP_SECONDS + 10  # the broker stays away longer than a minute
    broker_up[0] = True
    await c.run_once()
    assert [(a["ask_id"], a["grant_id"]) for a in sent] == [("A", sent[0]["grant_id"])]
    # The rebalance after the broker's return: the worker sends A again, its answer crossing the copy.
    await c.handle(ASK, REPLY, None)
    await c.run_once()
    assert {a["grant_id"] for a in sent} == {sent[0]["grant_id"]}, "one ask, two grants"
    assert not c.book.waiting
    # Its request ends and gives its site's slot back; nothing takes it again for the hour's lease.
    await c.handle({"op": "release", "site_id": "s", "request_id": "r"}, None, None)
    await c.handle(ASK, REPLY, None)
    await c.run_once()
    assert "r" not in c.book.slot("s").holders
