"""streams/limiter/agent.py stop_limiter: a stopping worker closes what the limiter's thread opened, in order."""
from __future__ import annotations

import asyncio
import json

import pytest

from streams.limiter import agent
from streams.limiter.coordinator import limiter_topic
from streams.limiter.outbox import Outbox
from streams.limiter.own_loop import OwnLoop


class FakeProducer:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def send(self, topic, value=None, key=None, partition=None, headers=None):
        await asyncio.sleep(0.01)  # slow enough that the stop begins with records still queued
        self.events.append(f"sent {json.loads(value)['n']}")
        ack = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    async def stop(self) -> None:
        self.events.append("producer stopped")


@pytest.mark.parametrize("threaded", [True, False])
def test_readers_end_then_what_is_queued_goes_then_the_producer_and_the_thread_stop(monkeypatch, threaded):
    events: list[str] = []
    own = OwnLoop("test-limiter-stop")
    outbox = Outbox(own, table=None)
    outbox._producer = FakeProducer(events)
    monkeypatch.setattr(agent, "limiter_loop", own)
    monkeypatch.setattr(agent, "outbox", outbox)
    monkeypatch.setattr(agent, "_stopped", False)
    monkeypatch.setattr(agent, "_limiter_task", None)
    monkeypatch.setattr(agent.reading, "task", None)

    async def a_reader(name: str) -> None:  # stands for a reader: its consumer closes when it is cancelled
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)
            events.append(f"{name} closed")

    async def scenario():
        if threaded:
            own.start()  # from the main loop, as the worker does
            asyncio.run_coroutine_threadsafe(_as_limiter_tasks(a_reader), own.loop).result(5)
        else:
            await _as_limiter_tasks(a_reader)
        await asyncio.sleep(0.01)
        # Sent by the stage work just before the stop: their acks are awaited, not left pending.
        pending = [outbox.to_limiter(limiter_topic, {"op": "release", "n": n}) for n in range(3)]
        await agent.stop_limiter()
        acks = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        later = await asyncio.gather(outbox.to_limiter(limiter_topic, {"op": "release", "n": 9}),
                                     return_exceptions=True)
        await agent.stop_limiter()  # once only
        return acks, later

    acks, later = asyncio.run(scenario())
    # The readers end and every record handed over before the stop leaves, in order, before the producer stops.
    assert [e for e in events if e.startswith("sent")] == ["sent 0", "sent 1", "sent 2"]
    # Both readers: the answers' (with the passes, _run_limiter) and the asks' of a takeover (reading.task).
    assert {"answers closed", "asks closed"} <= set(events) and events[-1] == "producer stopped"
    assert acks == [None, None, None]
    assert isinstance(later[0], ConnectionError)  # after the stop: told at once, no producer started again
    assert own.loop is None  # the thread ended
    assert events.count("producer stopped") == 1


async def _as_limiter_tasks(a_reader) -> None:
    agent._limiter_task = asyncio.ensure_future(a_reader("answers"))
    agent.reading.task = asyncio.ensure_future(a_reader("asks"))
