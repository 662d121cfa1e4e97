"""The worker's young garbage collections, run on a clock (see PacedCollections)."""
from __future__ import annotations

import asyncio
import gc
from typing import Callable

# How often the middle generation is collected when the young one is paced.
# Each pass takes about a second in the tier run (it walks every call in
# flight), so running it more often costs more stalls, not shorter ones. By
# CPython's count it ran every 8-13 minutes per worker there; 300 s runs it
# about twice as often (12 passes against 5 in two 15-minute runs,
# docs/intake.md). A longer period was not measured.
MIDDLE_EVERY_SECONDS = 300.0


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
    CPython's defaults would. Automatic collection stays on as a safety net for
    a burst between two ticks (threshold0 is left as it is). Nothing runs while
    automatic collection is off (streams.api.burst_gc holds it off in a burst
    of submissions).
    """

    def __init__(self, every: float, *, collect: Callable[[int], int] = gc.collect,
                 get_count: Callable[[], tuple[int, int, int]] = gc.get_count,
                 get_threshold: Callable[[], tuple[int, int, int]] = gc.get_threshold,
                 set_threshold: Callable[..., None] = gc.set_threshold,
                 isenabled: Callable[[], bool] = gc.isenabled) -> None:
        if every <= 0:
            raise ValueError(f"young collections every {every} s: must be > 0")
        self.every = every
        self._collect, self._get_count, self._isenabled = collect, get_count, isenabled
        self._get_threshold, self._set_threshold = get_threshold, set_threshold

    @property
    def middle_every_ticks(self) -> int:
        return max(1, round(MIDDLE_EVERY_SECONDS / self.every))

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
        self._collect(generation)
        return generation

    async def run(self) -> None:
        self.install()
        while True:
            await asyncio.sleep(self.every)
            self.tick()
