"""The worker's young garbage collections, run on a clock (see PacedCollections)."""
from __future__ import annotations

import asyncio
import gc
import os
from typing import Callable

# How often the middle generation is collected when the young one is paced, at
# first. Each pass takes about a second in the tier run (it walks every call in
# flight: 425,000 objects at 2,800 calls, 0.45 s of CPU on a free core), so
# running it more often costs more stalls, not shorter ones.
MIDDLE_EVERY_SECONDS = 300.0
# A pass that finds fewer unreachable objects than this found nothing worth its
# stall: the next one comes twice as late, up to MIDDLE_MOST_SECONDS. At 2,800
# calls in flight three passes in a row found none at all (session 22): every
# call's objects are freed by reference counting or by the young passes.
MIDDLE_FRUITLESS = 1_000
MIDDLE_MOST_SECONDS = 2_400.0
# ... but a pass is due at once when the process has grown this much since the
# last one: cyclic garbage that reached the middle generation never waits long.
MIDDLE_RSS_GROWTH_BYTES = 128 * 1024 * 1024


def resident_bytes() -> int | None:
    """This process's resident set now (Linux); None where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PacedCollections:
    """Collects the young generation every `every` seconds instead of every N net allocations.

    Written by hand because CPython offers no clock for it. Its trigger counts
    allocations *minus deallocations* of tracked objects. A worker at steady
    state (thousands of calls in flight, each ~30 s) frees old objects about as
    fast as it makes new ones, so that count hardly grows: young passes come
    seldom, and when one comes, the young generation holds everything made
    since the last one that is still alive. In the 15-minute tier run such
    passes held a worker's loop 284 ms at p99, and a permit granted ahead waits
    for its worker's loop. On a clock, a young pass walks only what was made in
    the last `every` seconds and is still alive.

    The middle generation is collected every MIDDLE_EVERY_SECONDS (its threshold
    is set to that many ticks), the old one after 100 middle passes, as
    CPython's defaults would. A middle pass that finds (next to) nothing puts
    the next one twice as far off, up to MIDDLE_MOST_SECONDS; one that finds
    garbage brings the period back; growth of MIDDLE_RSS_GROWTH_BYTES since the
    last pass makes one due at once. Automatic collection stays on as a safety
    net for a burst between two ticks (threshold0 is left as it is). Nothing
    runs while automatic collection is off (streams.api.burst_gc holds it off
    in a burst of submissions).
    """

    def __init__(self, every: float, *, collect: Callable[[int], int] = gc.collect,
                 get_count: Callable[[], tuple[int, int, int]] = gc.get_count,
                 get_threshold: Callable[[], tuple[int, int, int]] = gc.get_threshold,
                 set_threshold: Callable[..., None] = gc.set_threshold,
                 isenabled: Callable[[], bool] = gc.isenabled,
                 resident: Callable[[], int | None] = resident_bytes) -> None:
        if every <= 0:
            raise ValueError(f"young collections every {every} s: must be > 0")
        self.every = every
        self._collect, self._get_count, self._isenabled = collect, get_count, isenabled
        self._get_threshold, self._set_threshold = get_threshold, set_threshold
        self._resident = resident
        self.middle_seconds = MIDDLE_EVERY_SECONDS
        self._resident_after_middle = resident()

    @property
    def middle_every_ticks(self) -> int:
        return max(1, round(self.middle_seconds / self.every))

    def install(self) -> None:
        """The middle generation's threshold in ticks of this clock (the young one's is kept)."""
        young, _, old = self._get_threshold()
        self._set_threshold(young, self.middle_every_ticks, old)

    def tick(self) -> int | None:
        """One pass: the oldest generation due, else the young one. Returns it (None: collection is off)."""
        if not self._isenabled():
            return None
        counts, thresholds = self._get_count(), self._get_threshold()
        generation = next((g for g in (2, 1) if counts[g] >= thresholds[g]), 0)
        if generation == 0 and self._grown():
            generation = 1
        found = self._collect(generation)
        if generation >= 1:
            self._after_middle(found or 0)
        return generation

    def _grown(self) -> bool:
        now, before = self._resident(), self._resident_after_middle
        return now is not None and before is not None and now - before >= MIDDLE_RSS_GROWTH_BYTES

    def _after_middle(self, found: int) -> None:
        """The next middle pass: twice as far off after a fruitless one, back to the start after one that found garbage."""
        if found < MIDDLE_FRUITLESS:
            self.middle_seconds = min(MIDDLE_MOST_SECONDS, 2 * self.middle_seconds)
        else:
            self.middle_seconds = MIDDLE_EVERY_SECONDS
        self._resident_after_middle = self._resident()
        self.install()

    async def run(self) -> None:
        self.install()
        while True:
            await asyncio.sleep(self.every)
            self.tick()
