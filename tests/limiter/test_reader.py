"""streams/limiter/reader.py: one partition, in order, once each, through broker failures at any point."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings, strategies as st

from streams.limiter import reader
from streams.log_limit import Backoff

TP = ("blog.limiter", 0)


@dataclass
class Record:
    offset: int
    value: bytes


@dataclass
class Broker:
    """One partition and a script of failures: each call of a consumer takes the next entry (True: it fails)."""

    records: list[Record]
    script: list[bool]
    batch: int = 3
    consumers: int = 0
    fetches: int = 0
    stopped: int = 0
    appended_after_start: list[Record] = field(default_factory=list)

    def fails(self) -> bool:
        return self.script.pop(0) if self.script else False

    def consumer(self) -> "Consumer":
        self.consumers += 1
        return Consumer(self)


class Consumer:
    def __init__(self, broker: Broker) -> None:
        self.broker, self.pos = broker, None

    def _maybe_fail(self) -> None:
        if self.broker.fails():
            raise ConnectionError("broker away")

    async def start(self) -> None:
        self._maybe_fail()

    def assign(self, tps) -> None:
        assert tps == [TP]

    async def seek_to_end(self, tp) -> None:
        self._maybe_fail()
        self.pos = len(self.broker.records)

    async def position(self, tp) -> int:
        self._maybe_fail()  # aiokafka looks the end up here: the start is fixed once this answers
        # Records written after the reader fixed its start: it must read them, failures or not.
        self.broker.records.extend(self.broker.appended_after_start)
        self.broker.appended_after_start = []
        return self.pos

    def seek(self, tp, offset: int) -> None:
        self.pos = offset

    async def getmany(self, tp, timeout_ms: int):
        self.broker.fetches += 1
        self._maybe_fail()
        await asyncio.sleep(0)
        taken = self.broker.records[self.pos:self.pos + self.broker.batch]
        self.pos += len(taken)
        return {tp: taken} if taken else {}

    async def stop(self) -> None:
        self.broker.stopped += 1


@pytest.fixture(autouse=True)
def no_back_off_pauses(monkeypatch):
    monkeypatch.setattr(reader, "Backoff", lambda **_: Backoff(first=0.0, cap=0.0, jitter=0.0))


def _read(broker: Broker, start: int | None, *, stop_after: int, first_fails: int = 0) -> list[int]:
    handled: list[int] = []
    tries = []

    async def first_offset():
        tries.append(1)
        if len(tries) <= first_fails:
            raise ConnectionError("table not loaded yet")
        return start

    async def handle(record):
        handled.append(record.offset)

    # A reader that skipped records would wait for them forever: a bound on its fetches, far above need.
    asyncio.run(reader.read_partition(
        TP, handle, first_offset=first_offset, new_consumer=broker.consumer,
        keep_going=lambda: len(handled) < stop_after and broker.fetches < 500, what="test"))
    assert len(tries) == first_fails + 1  # asked again only after it failed
    return handled


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 30), start=st.integers(0, 30), script=st.lists(st.booleans(), max_size=40),
       batch=st.integers(1, 5), first_fails=st.integers(0, 2))
def test_every_record_from_the_start_in_order_once_whatever_fails(n, start, script, batch, first_fails):
    start = min(start, n)
    broker = Broker([Record(i, b"x") for i in range(n)], list(script), batch)
    handled = _read(broker, start, stop_after=n - start, first_fails=first_fails) if n > start else []
    assert handled == list(range(start, n))
    assert broker.stopped == broker.consumers  # every consumer made was stopped


@settings(max_examples=100, deadline=None)
@given(before=st.integers(0, 10), after=st.integers(1, 10), script=st.lists(st.booleans(), max_size=30))
def test_from_the_end_means_the_end_when_reading_began_not_after_each_failure(before, after, script):
    broker = Broker([Record(i, b"x") for i in range(before)], list(script))
    broker.appended_after_start = [Record(before + i, b"y") for i in range(after)]
    assert _read(broker, None, stop_after=after) == list(range(before, before + after))


def test_it_stops_between_two_records_once_the_reading_is_not_wanted():
    broker = Broker([Record(i, b"x") for i in range(10)], [], batch=10)
    assert _read(broker, 0, stop_after=4) == [0, 1, 2, 3]
    assert broker.stopped == 1


def test_a_failing_handler_costs_that_record_only():
    broker = Broker([Record(i, b"x") for i in range(6)], [])
    handled: list[int] = []

    async def handle(record):
        if record.offset == 2 and 2 not in handled:
            handled.append(2)
            raise ValueError("bad record")
        handled.append(record.offset)

    async def from_start():
        return 0

    asyncio.run(reader.read_partition(TP, handle, first_offset=from_start, new_consumer=broker.consumer,
                                      keep_going=lambda: len(handled) < 6, what="test"))
    assert handled == [0, 1, 2, 3, 4, 5] and broker.consumers == 2
