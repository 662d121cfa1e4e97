"""streams/limiter/skew.py: a worker estimates its clock's offset from the coordinator's from its asks' round
trips, and warns only when the whole interval the round trip allows is beyond the bound (fake clocks)."""
from __future__ import annotations

import logging
import time

import pytest
from hypothesis import given, strategies as st

from streams import metrics
from streams.limiter.skew import KEEP_SECONDS, ClockSkew


class Clocks:
    """The worker's wall clock; the coordinator's is `offset` ahead of it."""

    def __init__(self, offset: float) -> None:
        self.offset = offset
        self.now = 1000.0  # the worker's

    def monotonic(self) -> float:
        return self.now

    def round_trip(self, skew: ClockSkew, there: float, inside: float, back: float) -> None:
        """An ask that takes `there` to reach the coordinator, waits `inside`, and `back` to return."""
        asked = self.now
        arrived = asked + there + self.offset
        sent = arrived + inside
        self.now = asked + there + inside + back
        skew.answered(asked, {"arrived_at": arrived, "sent_at": sent}, self.now)


def test_a_worker_behind_the_coordinator_is_measured_and_warned_about_once(caplog):
    clocks, published = Clocks(offset=0.2), []
    skew = ClockSkew(0.05, published.append, clock=clocks.monotonic)
    with caplog.at_level(logging.WARNING, logger="streams.limiter.skew"):
        clocks.round_trip(skew, there=0.01, inside=0.0, back=0.01)  # a quick trip: a narrow interval
        clocks.round_trip(skew, there=0.4, inside=2.0, back=0.01)  # a slow, lopsided one and a wait in line
        for _ in range(5):
            clocks.round_trip(skew, there=0.3, inside=0.0, back=0.3)
    assert skew.low <= 0.2 <= skew.high and skew.high - skew.low == pytest.approx(0.02)
    assert skew.offset == pytest.approx(0.2) and published[-1] == pytest.approx(0.2)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "0.200 s behind the coordinator's" in warnings[0]


def test_a_worker_ahead_is_said_to_be_ahead():
    clocks = Clocks(offset=-0.3)
    skew = ClockSkew(0.05, clock=clocks.monotonic)
    clocks.round_trip(skew, there=0.005, inside=0.001, back=0.005)
    assert skew.high < -0.05 and skew.offset == pytest.approx(-0.3)


@pytest.mark.parametrize("offset", [0.0, 0.03, -0.04])
def test_lopsided_or_slow_trips_never_raise_a_false_alarm(caplog, offset):
    """The offset is only known within the round trip: a trip of 1 s out and 5 ms back looks like half a
    second of skew by NTP's midpoint, and must not be reported as one."""
    clocks = Clocks(offset=offset)
    skew = ClockSkew(0.05, clock=clocks.monotonic)
    with caplog.at_level(logging.WARNING, logger="streams.limiter.skew"):
        for _ in range(20):
            clocks.round_trip(skew, there=1.0, inside=0.5, back=0.005)
    assert skew.low <= offset <= skew.high
    assert caplog.records == []


def test_old_round_trips_leave_the_estimate_so_a_clock_stepped_since_shows():
    clocks = Clocks(offset=0.0)
    skew = ClockSkew(0.05, clock=clocks.monotonic)
    clocks.round_trip(skew, there=0.001, inside=0.0, back=0.001)  # a very tight one
    clocks.now += KEEP_SECONDS + 1
    clocks.offset = 0.5  # the worker's clock stepped back half a second (NTP off, then on)
    clocks.round_trip(skew, there=0.02, inside=0.0, back=0.02)
    assert skew.offset == pytest.approx(0.5)


def test_an_answer_without_the_coordinators_times_is_no_measurement():
    skew = ClockSkew(0.05)
    skew.answered(1.0, {"grant_id": "g"}, 1.1)  # a takeover's answer from the recovered table
    assert skew.offset is None


@pytest.mark.asyncio
async def test_acquire_measures_each_answer_and_exports_the_offset(monkeypatch):
    import streams.limiter.client as limiter

    budgets = limiter.Budgets()

    async def answered(value, deadline=None):
        at = time.time() + 0.3  # the coordinator's clock is 0.3 s ahead of ours
        return {"ask_id": value["ask_id"], "grant_id": "g", "granted_at": at - 0.3, "use_by": at + 0.5,
                "last_use": at + 5.0, "needs": value["needs"], "queued": 0.0, "arrived_at": at, "sent_at": at}

    monkeypatch.setattr(budgets, "_ask_until_answered", answered)
    await budgets.acquire(site_id="s", request_id="r", needs={"openai_requests": 1.0}, slot_limit=3)
    assert budgets.clock_skew.low <= 0.3 <= budgets.clock_skew.high
    assert metrics.limiter_clock_offset._value.get() == budgets.clock_skew.offset


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.5, 3.0, 20.0, 70.0]),  # time since the answer before
                          st.sampled_from([-0.25, 0.0, 0.125]),  # the interval's low end (exact in binary)
                          st.sampled_from([0.0, 0.015625, 0.03125, 0.0625])),  # its width
                min_size=1, max_size=200))
def test_the_estimate_is_the_narrowest_interval_of_the_last_minute(answers):
    # What the estimate is, written as a scan over every interval of the minute: the sliding minimum
    # the class keeps must pick the same one (the oldest of equally narrow ones).
    clock = [0.0]
    skew, kept = ClockSkew(10.0, clock=lambda: clock[0]), []
    for gap, low, width in answers:
        clock[0] += gap
        skew.answered(0.0, {"arrived_at": low + width, "sent_at": 1.0 + low}, 1.0)  # low = sent - 1, high = arrived
        kept = [s for s in kept + [(clock[0], low, low + width)] if s[0] >= clock[0] - KEEP_SECONDS]
        narrowest = min(kept, key=lambda s: s[2] - s[1])
        assert (skew.low, skew.high) == (narrowest[1], narrowest[2])
