"""One-way messages to the coordinator (streams/limiter/client.py CastBatch): those made together travel as one
record, and the coordinator handles a batch as its messages, in order, one bad message hurting no other."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from streams.limiter.client import Budgets, CastBatch, Permit
from streams.limiter.coordinator import ANSWERS_KEEP_SECONDS, ANSWERS_MAX, Coordinator, _Answer

TOK = "openai_tokens"


async def test_messages_made_together_go_as_one_record_in_order_and_one_alone_as_itself():
    records: list[dict] = []

    async def send(value):
        records.append(value)

    casts = CastBatch(send)
    await asyncio.gather(*(casts.send({"op": "release", "site_id": "s", "request_id": f"r{i}"}) for i in range(5)))
    await casts.send({"op": "release", "site_id": "s", "request_id": "alone"})
    assert records == [
        {"op": "batch", "ops": [{"op": "release", "site_id": "s", "request_id": f"r{i}"} for i in range(5)]},
        {"op": "release", "site_id": "s", "request_id": "alone"},
    ]


async def test_messages_arriving_while_a_record_is_sent_wait_for_the_next_one():
    records: list[dict] = []
    sending = asyncio.Event()

    async def slow_send(value):
        records.append(value)
        await sending.wait()

    casts = CastBatch(slow_send)
    first = asyncio.ensure_future(casts.send({"op": "settle", "n": 0}))
    await asyncio.sleep(0.01)  # the first record is on its way
    later = [asyncio.ensure_future(casts.send({"op": "settle", "n": n})) for n in (1, 2)]
    await asyncio.sleep(0.01)
    assert not first.done() and not any(f.done() for f in later)  # nobody returns before its record went
    sending.set()
    await asyncio.gather(first, *later)
    assert records == [{"op": "settle", "n": 0}, {"op": "batch", "ops": [{"op": "settle", "n": 1}, {"op": "settle", "n": 2}]}]


async def test_a_failed_send_reaches_every_message_of_its_record():
    async def broken(value):
        raise ConnectionError("broker away")

    casts = CastBatch(broken)
    results = await asyncio.gather(*(casts.send({"op": "release", "n": n}) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_settle_release_and_late_reports_of_one_moment_share_records(monkeypatch):
    from streams.limiter import client as client_module

    casts: list[dict] = []
    durable: list[dict] = []

    async def cast(value):
        casts.append(value)

    async def send_durable(value):
        durable.append(value)

    monkeypatch.setattr(client_module, "_cast", cast)
    budgets = Budgets()
    budgets.late_reports = CastBatch(send_durable)
    permits = [Permit(f"g{n}", use_by=0.0, needs={TOK: 10}, waited=0.0) for n in range(4)]
    await asyncio.gather(*(budgets.settle(p, TOK, 5) for p in permits), budgets.release_slot("s", "r1"),
                         *(budgets.report_late(p, time.time()) for p in permits))
    assert [op["op"] for op in casts[0]["ops"]] == ["settle"] * 4 + ["release"] and len(casts) == 1
    assert [op["grant_id"] for op in durable[0]["ops"]] == ["g0", "g1", "g2", "g3"] and len(durable) == 1


async def test_the_coordinator_handles_a_batch_as_its_messages_in_order_and_a_bad_one_alone():
    c = Coordinator()
    c.active = c.loaded = True
    tokens = c.book.rate(TOK)
    now = time.time()
    tokens.add(now - 1.0, 2000, "g1")
    tokens.add(now - 1.0, 2000, "g2")
    tokens.add(now - 1.0, 2000, "g3")
    await c.handle({"op": "batch", "ops": [
        {"op": "unused", "grant_id": "g1", "needs": {TOK: 2000}},  # never sent: its room comes back
        {"op": "late"},  # malformed: logged, and the rest still count
        {"op": "unused", "grant_id": "g3", "needs": {TOK: 2000}},
    ]}, None, 7)
    assert tokens.used(time.time()) == pytest.approx(2000)  # only g2 still counts


async def test_an_answer_for_an_ask_of_this_process_is_handed_over_without_the_reply_topic(monkeypatch):
    """The worker that holds the limiter answers its own asks in-process (after the grant is durable, as
    any answer); answers for other workers go to their reply topics; one nobody waits for is dropped."""
    from faust.agents.replies import ReplyPromise

    from streams.limiter import coordinator as coordinator_module

    app = coordinator_module.app
    outbox = coordinator_module.outbox
    produced: list[tuple[str, dict]] = []

    async def produce(topic, key, value, partition):
        produced.append((topic, json.loads(value)))

    monkeypatch.setattr(outbox, "_produce", produce)
    monkeypatch.setattr(outbox, "_reply_topics", {})
    waiting = app._reply_consumer._waiting  # type: ignore[attr-defined]
    own = app.conf.reply_to
    promise = ReplyPromise(own, "c-mine")
    waiting["c-mine"].add(promise)
    try:
        c = Coordinator()
        answer = {"grant_id": "g1", "use_by": 1.0, "needs": {TOK: 10}}
        await c._send((own, "c-mine"), answer)
        await c._send((own, "c-mine"), answer)  # a second answer to the same ask: nothing happens
        await c._send((own, "c-gone"), answer)  # nobody waits for it: dropped, nothing is produced
        await c._send(("blogstream-reply-other-worker", "c-theirs"), answer)
        await c._send(("blogstream-reply-other-worker", "c-theirs-2"), answer)
        assert promise.done() and promise.result() == answer and promise.result() is not answer
        # What Faust's reply consumer reads: its ReqRepResponse, as the agent would have replied.
        assert [(topic, record["value"], record["correlation_id"], record["__faust"]["ns"])
                for topic, record in produced] == [
            ("blogstream-reply-other-worker", answer, "c-theirs", "@ReqRepResponse"),
            ("blogstream-reply-other-worker", answer, "c-theirs-2", "@ReqRepResponse")]
        assert len(outbox._reply_topics) == 1  # one Topic per reply topic, not a new one (and its garbage) per answer
    finally:
        waiting.pop("c-mine", None)


async def test_copies_of_waiting_asks_sent_together_keep_their_place_and_their_reply_route(monkeypatch):
    """Budgets._ask_again: copies made in the same moment go as one record, each with the reply route of its
    first copy; the coordinator takes each as a re-ask (same place in line, that route), or answers it at once
    when its ask was granted meanwhile."""
    from faust.agents.replies import ReplyPromise

    records: list[dict] = []

    async def durable(value):
        records.append(value)

    b = Budgets()
    b.reasks = CastBatch(durable)
    asks = [{"op": "acquire", "ask_id": f"a{n}", "site_id": "s", "request_id": f"r{n}", "needs": {TOK: 10},
             "lane": "interactive"} for n in range(3)]
    deliveries = [await b._ask_again(ask, ReplyPromise("reply-w2", f"c{n}")) for n, ask in enumerate(asks)]
    await asyncio.gather(*deliveries)
    assert records == [{"op": "batch", "ops": [{"reply_to": "reply-w2", "correlation_id": f"c{n}", "value": asks[n]}
                                               for n in range(3)]}]

    c = Coordinator()
    c.active = c.loaded = True
    sent: list[tuple] = []

    async def send(reply, value):
        sent.append((reply, value["ask_id"]))

    monkeypatch.setattr(c, "_send", send)
    await c.handle({"op": "acquire", "ask_id": "a0", "site_id": "s", "request_id": "r0", "needs": {TOK: 10},
                    "lane": "interactive"}, {"Faust-Ag-ReplyTo": b"reply-w2", "Faust-Ag-CorrelationId": b"c0"}, 7)
    seq = c.book.waiting["a0"].seq
    c.book.waiting["a0"].reply = None
    await c.handle(records[0], None, 8)
    assert c.book.waiting["a0"].seq == seq and c.book.waiting["a0"].reply == ("reply-w2", "c0")  # same place
    assert {"a1", "a2"} <= set(c.book.waiting) and c.book.waiting["a2"].reply == ("reply-w2", "c2")


def test_answers_are_kept_a_minute_for_re_asks_then_forgotten_oldest_first():
    """Memory: the last minute of answers, not the last 50,000 (250 s of the tier benchmark's, ~70 MB)."""
    c = Coordinator()
    now = 10_000.0
    for n in range(100):  # one answer a second, the oldest first
        c.answers[f"a{n}"] = _Answer({"ask_id": f"a{n}"}, None, sent=True, made_at=now - 99 + n)
    c._forget_answers(now - ANSWERS_KEEP_SECONDS)
    assert list(c.answers) == [f"a{n}" for n in range(39, 100)]  # made in the last 60 s
    for n in range(ANSWERS_MAX + 5):
        c.answers[f"b{n}"] = _Answer({}, None, made_at=now)
    c._forget_answers(now - ANSWERS_KEEP_SECONDS)
    assert len(c.answers) == ANSWERS_MAX and f"b{ANSWERS_MAX + 4}" in c.answers  # and never more than the cap
