import asyncio
import gc
from collections import deque

import pytest

from hypothesis import given
from hypothesis import strategies as st

from streams.gc_pacing import (
    MIDDLE_EVERY_SECONDS,
    MIDDLE_FRUITLESS,
    MIDDLE_MOST_SECONDS,
    MIDDLE_RSS_GROWTH_BYTES,
    PacedCollections,
    resident_bytes,
)


class FakeCollector:
    def __init__(self, counts=(0, 0, 0), thresholds=(20_000, 100, 100), enabled=True, found=0, resident=None):
        self.counts, self.thresholds, self.enabled = list(counts), tuple(thresholds), enabled
        self.collected: list[int] = []
        self.found = found  # what each pass finds unreachable
        self.resident = resident  # bytes, or None: not known

    def collect(self, generation):
        self.collected.append(generation)
        return self.found

    def pacer(self, every=0.2):
        return PacedCollections(
            every, collect=self.collect, get_count=lambda: tuple(self.counts),
            get_threshold=lambda: self.thresholds, set_threshold=self.set_threshold,
            isenabled=lambda: self.enabled, resident=lambda: self.resident)

    def set_threshold(self, *thresholds):
        self.thresholds = thresholds


def test_a_tick_collects_the_young_generation():
    collector = FakeCollector(counts=(3, 5, 0))
    assert collector.pacer().tick() == 0
    assert collector.collected == [0]


@pytest.mark.parametrize("counts, due", [((0, 100, 0), 1), ((0, 100, 100), 2), ((0, 0, 100), 2), ((0, 99, 99), 0)])
def test_a_tick_collects_the_oldest_generation_due(counts, due):
    collector = FakeCollector(counts=counts)
    assert collector.pacer().tick() == due
    assert collector.collected == [due]


def test_nothing_is_collected_while_collection_is_held_off():
    collector = FakeCollector(enabled=False)
    assert collector.pacer().tick() is None
    assert collector.collected == []


def test_install_counts_the_middle_generation_in_ticks_and_keeps_the_others():
    collector = FakeCollector(thresholds=(20_000, 100, 100))
    collector.pacer(every=0.2).install()
    assert collector.thresholds == (20_000, round(MIDDLE_EVERY_SECONDS / 0.2), 100)
    collector.pacer(every=10_000).install()
    assert collector.thresholds[1] == 1


def middle_pass(collector, pacer, found):
    collector.found, collector.counts = found, [0, collector.thresholds[1], 0]
    assert pacer.tick() == 1


def test_a_fruitless_middle_pass_puts_the_next_twice_as_far_off_and_one_that_finds_garbage_brings_it_back():
    collector = FakeCollector()
    pacer = collector.pacer(every=0.5)
    pacer.install()
    assert collector.thresholds[1] == MIDDLE_EVERY_SECONDS / 0.5
    middle_pass(collector, pacer, found=0)
    assert pacer.middle_seconds == 2 * MIDDLE_EVERY_SECONDS and collector.thresholds[1] == 2 * MIDDLE_EVERY_SECONDS / 0.5
    middle_pass(collector, pacer, found=MIDDLE_FRUITLESS - 1)
    assert pacer.middle_seconds == 4 * MIDDLE_EVERY_SECONDS
    middle_pass(collector, pacer, found=MIDDLE_FRUITLESS)
    assert pacer.middle_seconds == MIDDLE_EVERY_SECONDS and collector.thresholds == (20_000, MIDDLE_EVERY_SECONDS / 0.5, 100)


@given(found=st.lists(st.integers(0, 10 * MIDDLE_FRUITLESS), max_size=30))
def test_the_middle_period_stays_between_its_start_and_its_cap(found):
    collector = FakeCollector()
    pacer = collector.pacer(every=0.5)
    pacer.install()
    for n in found:
        middle_pass(collector, pacer, found=n)
        assert MIDDLE_EVERY_SECONDS <= pacer.middle_seconds <= MIDDLE_MOST_SECONDS
        assert collector.thresholds[1] == round(pacer.middle_seconds / 0.5)
        if n >= MIDDLE_FRUITLESS:
            assert pacer.middle_seconds == MIDDLE_EVERY_SECONDS


def test_growth_since_the_last_middle_pass_makes_one_due_at_once():
    collector = FakeCollector(resident=100 << 20)
    pacer = collector.pacer()
    collector.resident += MIDDLE_RSS_GROWTH_BYTES - 1
    assert pacer.tick() == 0
    collector.resident += 1
    assert pacer.tick() == 1  # and the growth counts from here on
    assert pacer.tick() == 0
    collector.resident = None  # not known (no /proc): only the clock
    assert pacer.tick() == 0


def test_the_resident_set_is_read_where_proc_is_there():
    assert resident_bytes() is None or resident_bytes() > 1 << 20


@pytest.mark.parametrize("every", [0, -1])
def test_a_clock_that_never_ticks_is_refused(every):
    with pytest.raises(ValueError, match="must be > 0"):
        PacedCollections(every)


def test_run_ticks_on_its_clock():
    collector = FakeCollector()

    async def three_ticks():
        task = asyncio.ensure_future(collector.pacer(every=0.001).run())
        while len(collector.collected) < 3:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(three_ticks())
    assert collector.collected[:3] == [0, 0, 0]


@pytest.fixture
def collector_state():
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    gc.collect()
    gc.enable()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()


def steady_state(steps, *, tick=None, every=100):
    """Objects in flight: each step makes one (a dict and a list) and frees the oldest."""
    in_flight = deque({"call": i, "parts": [i]} for i in range(5_000))
    largest_young = 0
    for step in range(steps):
        in_flight.append({"call": step, "parts": [step]})
        in_flight.popleft()
        if tick is not None and step % every == 0:
            tick()
        if step % 1_000 == 999:
            largest_young = max(largest_young, len(gc.get_objects(generation=0)))
    return largest_young


def test_cpython_alone_lets_the_young_generation_grow_far_past_its_threshold(collector_state):
    """Why the pacer exists: frees count against allocations, so at steady state the count stays
    under its threshold while the young generation holds every object still alive."""
    largest_young = steady_state(20_000)
    assert largest_young > 10 * gc.get_threshold()[0]


def test_on_a_clock_the_young_generation_holds_only_what_one_period_made(collector_state):
    pacer = PacedCollections(0.2)
    largest_young = steady_state(20_000, tick=pacer.tick, every=100)
    # 100 steps make 200 objects; what the test itself holds comes on top.
    assert largest_young < 2_000
