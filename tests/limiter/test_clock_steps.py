"""The coordinator's wall clock stepping (streams/limiter/clock_steps.py, Coordinator.now).

A step forward by X made every grant before it leave its window X seconds early while the providers
still count it: the book granted that room a second time. Now nothing is granted until no grant made
before the step can be in any provider's window (a window, the grace and a lease); a step back only
makes the old grants count longer, and the once-a-second upkeep goes on from the new time.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter import coordinator as coordinator_module
from streams.limiter.clock_steps import ClockSteps
from streams.limiter.coordinator import Coordinator
from streams.limiter.specs import span_seconds


class Clocks:
    """A wall clock that can step and a monotonic one that cannot."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_800_000_000.0, 1000.0

    def advance(self, seconds: float, step: float = 0.0) -> None:
        self.wall += seconds + step
        self.mono += seconds


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(-0.05, 0.05),
                                st.one_of(st.just(0.0), st.floats(0.2, 3600.0), st.floats(-3600.0, -0.2))),
                      min_size=1, max_size=30))
def test_a_step_beyond_the_tolerance_is_told_once_and_slewing_never(moves):
    """Moves of the wall clock within the tolerance (NTP slewing, the jitter of reading two clocks) are
    never a step; a step beyond it is told by the next look, by its size, once."""
    clocks = Clocks()
    steps = ClockSteps(0.1, wall=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    assert steps.look() == (clocks.wall, 0.0)  # the first look has nothing to compare with
    assert ClockSteps(0.0).tolerance > 0  # a grace of 0: still above a float time of day's rounding
    for seconds, slew, step in moves:
        clocks.advance(seconds, slew + step)
        now, told = steps.look()
        assert now == clocks.wall
        if step == 0.0:
            assert told == 0.0
        else:
            assert told == pytest.approx(step + slew, abs=1e-6)


def test_a_thread_stopped_between_the_two_reads_is_not_a_step():
    """A collection or a busy machine between reading the monotonic clock and the wall clock: the reads are
    taken again, and what gap is left widens the tolerance instead of reading as a step."""
    clocks, pauses = Clocks(), iter([0.0, 0.0, 0.3, 0.3, 0.0, 0.5, 0.5, 0.5, 0.0])

    def monotonic() -> float:
        clocks.advance(next(pauses, 0.0))  # the thread stopped this long before this read
        return clocks.mono

    steps = ClockSteps(0.1, wall=lambda: clocks.wall, monotonic=monotonic)
    assert steps.look()[1] == 0.0
    for _ in range(4):
        clocks.advance(1.0)
        assert steps.look()[1] == 0.0


def _coordinator(monkeypatch, clocks: Clocks) -> tuple[Coordinator, list[str]]:
    """A loaded coordinator on `clocks`, answering into a list, writing nowhere."""
    monkeypatch.setattr(coordinator_module, "time", SimpleNamespace(time=lambda: clocks.wall))
    c = Coordinator()
    c.clock = ClockSteps(0.1, wall=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    c.active = c.loaded = True
    c.last_tick = clocks.wall
    answered: list[str] = []

    async def send(reply, value):
        answered.append(value["ask_id"])

    async def persist(writes):
        return None

    monkeypatch.setattr(c, "_send", send)
    monkeypatch.setattr(c, "_persist", persist)
    monkeypatch.setattr(c, "publish_stats", lambda now: None)
    monkeypatch.setattr(c, "_publish_shares", lambda: None)
    return c, answered


async def ask(c: Coordinator, ask_id: str) -> None:
    await c.handle({"op": "acquire", "ask_id": ask_id, "site_id": "s", "request_id": ask_id,
                    "needs": {"replicate_requests": 1}, "lane": "interactive"},
                   {"Faust-Ag-ReplyTo": b"r", "Faust-Ag-CorrelationId": ask_id.encode()}, None)


@pytest.mark.asyncio
async def test_a_step_forward_holds_every_grant_until_none_made_before_it_can_be_counted(monkeypatch):
    clocks = Clocks()
    c, answered = _coordinator(monkeypatch, clocks)
    c.book.workers.saw("w1", clocks.wall)
    c.book.workers.saw("w2", clocks.wall)
    await ask(c, "before")
    await c.run_once()
    await c.run_once()
    assert answered == ["before"]

    clocks.advance(0.5, step=40.0)  # NTP puts the clock 40 s forward
    await ask(c, "after")
    await c.run_once()
    assert c.book.workers.gone(clocks.wall) == set()  # a worker heard 0.5 s ago is not 40 s silent
    hold = c.hold_until - clocks.wall
    assert hold >= span_seconds() + max(c.book.lease_seconds, c.book.lookahead, 30.0)  # Wix leases: 30 s
    while clocks.wall < c.hold_until - 1.0:  # nothing granted meanwhile, however the book sees its windows
        clocks.advance(1.0)
        await c.run_once()
        assert answered == ["before"]
    clocks.advance(1.0)
    await c.run_once()
    await c.run_once()
    assert answered == ["before", "after"]


@pytest.mark.asyncio
async def test_a_step_back_holds_nothing_and_the_upkeep_goes_on_from_the_new_time(monkeypatch):
    clocks = Clocks()
    c, answered = _coordinator(monkeypatch, clocks)
    await c.run_once()
    clocks.advance(0.5, step=-600.0)  # ten minutes back
    await ask(c, "after")
    await c.run_once()
    await c.run_once()
    assert answered == ["after"] and c.hold_until < clocks.wall
    assert c.last_tick <= clocks.wall  # else the upkeep would wait ten minutes for the clock to catch up
    upkeep = []
    monkeypatch.setattr(c, "publish_stats", lambda now: upkeep.append(now))
    clocks.advance(1.5)
    await c.run_once()
    assert upkeep == [clocks.wall]


def test_a_step_forward_does_not_make_a_worker_look_silent_longer(monkeypatch):
    """A worker last heard 25 s ago is not gone (30 s) because the clock stepped 10 s forward meanwhile."""
    clocks = Clocks()
    c, _ = _coordinator(monkeypatch, clocks)
    c.now()
    c.book.workers.saw("quiet", clocks.wall)
    for _ in range(25):  # another worker keeps talking: silence would prove something
        clocks.advance(1.0)
        c.now()
        c.book.workers.saw("busy", clocks.wall)
        c.book.workers.heard(clocks.wall)
    clocks.advance(0.0, step=10.0)
    assert c.book.workers.gone(c.now()) == set()
    clocks.advance(7.0)  # "quiet" counts from the first message heard (1 s in): 31 s of real silence
    assert c.book.workers.gone(c.now()) == {"quiet"}
