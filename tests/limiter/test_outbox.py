"""streams/limiter/outbox.py: a worker's records to blog.limiter leave in the order handed over, each caller told
when the broker has its record, on the limiter's own loop."""
from __future__ import annotations

import asyncio
import json
import random
import threading

from hypothesis import given, settings as hsettings, strategies as st

from streams.limiter.coordinator import limiter_topic
from streams.limiter.outbox import Outbox
from streams.limiter.own_loop import OwnLoop


class FakeBroker:
    """`Outbox._produce`: records in arrival order; each ack comes later, some fail, some sends fail at once."""

    def __init__(self, rng: random.Random, fail_send: float, fail_ack: float) -> None:
        self.rng, self.fail_send, self.fail_ack = rng, fail_send, fail_ack
        self.records: list[dict] = []
        self.threads: set[str] = set()

    async def produce(self, topic, key, value, partition, headers=None):
        self.threads.add(threading.current_thread().name)
        for _ in range(self.rng.randint(0, 2)):
            await asyncio.sleep(0)
        if self.rng.random() < self.fail_send:
            raise ConnectionError("broker away")
        self.records.append(json.loads(value))
        ack = asyncio.get_running_loop().create_future()
        n = len(self.records)
        if self.rng.random() < self.fail_ack:
            asyncio.get_running_loop().call_later(self.rng.random() / 100, ack.set_exception, TimeoutError("no ack"))
        else:
            asyncio.get_running_loop().call_later(self.rng.random() / 100, ack.set_result, n)
        return ack


@hsettings(max_examples=25, deadline=None)
@given(senders=st.integers(1, 5), per_sender=st.integers(1, 30), seed=st.integers(0, 2**32),
       fail_send=st.sampled_from([0.0, 0.2]), fail_ack=st.sampled_from([0.0, 0.2]), threaded=st.booleans())
def test_records_leave_in_the_order_handed_over_and_each_caller_hears_of_its_own(
    senders, per_sender, seed, fail_send, fail_ack, threaded
):
    async def scenario():
        own = OwnLoop("test-outbox")
        if threaded:
            own.start()
        outbox = Outbox(own, table=None)
        broker = FakeBroker(random.Random(seed), fail_send, fail_ack)
        outbox._produce = broker.produce  # type: ignore[method-assign]
        handed: list[dict] = []

        async def sender(s: int):
            futures = []
            for n in range(per_sender):
                value = {"op": "settle", "sender": s, "n": n}
                handed.append(value)
                futures.append((value, outbox.to_limiter(limiter_topic, value)))
                if n % 3 == 0:
                    await asyncio.sleep(0)
            return [(value, await asyncio.gather(fut, return_exceptions=True)) for value, fut in futures]

        try:
            answers = await asyncio.wait_for(asyncio.gather(*(sender(s) for s in range(senders))), 30)
        finally:
            own.stop()
        sent = [r for r in broker.records]
        assert sent == [v for v in handed if v in sent]  # in the order handed over, failed ones left out
        for per in answers:
            for value, (result,) in per:
                if isinstance(result, BaseException):
                    assert isinstance(result, (ConnectionError, TimeoutError))
                else:
                    assert broker.records[result - 1] == value  # its own ack
        assert broker.threads == ({"test-outbox"} if threaded else {threading.current_thread().name})
        assert not outbox._to_send

    asyncio.run(scenario())


def test_a_stopping_worker_sends_what_is_queued_first_and_fails_what_cannot_go():
    async def scenario(broker_answers: bool):
        own = OwnLoop("test-outbox-close")
        outbox = Outbox(own, table=None)
        sent: list[dict] = []
        stuck = asyncio.Event()

        async def produce(topic, key, value, partition, headers=None):
            if not broker_answers:
                await stuck.wait()  # the broker away: the producer never starts
            sent.append(json.loads(value))
            ack = asyncio.get_running_loop().create_future()
            ack.set_result(len(sent))
            return ack

        outbox._produce = produce  # type: ignore[method-assign]
        futures = [outbox.to_limiter(limiter_topic, {"op": "release", "n": n}) for n in range(5)]
        try:
            await asyncio.wait_for(outbox.close(), 0.2)
        except asyncio.TimeoutError:
            pass
        outcomes = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
        return sent, outcomes

    sent, outcomes = asyncio.run(scenario(True))
    assert [r["n"] for r in sent] == [0, 1, 2, 3, 4] and outcomes == [1, 2, 3, 4, 5]
    sent, outcomes = asyncio.run(scenario(False))
    # Nothing could go: every caller hears so, the one being sent too (none waits forever).
    assert sent == [] and all(isinstance(o, ConnectionError) for o in outcomes)
