"""The coordinator's wall clock stepping: NTP correcting a clock at once, a virtual machine resumed.

Every grant is dated by the coordinator's wall clock, and a grant counts in its budget's
window for one window plus the grace from that date (book.py). A provider counts by its own
clock, which does not step with ours. So when ours steps forward by X, every grant made
before the step looks X seconds older than it is and leaves the window X seconds early: the
book would grant room the provider still counts as taken (429s, a budget overrun). When it
steps back, those grants count X seconds longer than they need to: budget left unused,
never overrun, but the once-a-second upkeep would wait for the clock to catch up.

Steps are seen by comparing how far the wall clock and the monotonic clock moved since the
last look (the monotonic clock never steps; NTP's slewing moves the wall clock by at most
0.5 ms a second, well inside the tolerance). What the coordinator does about one is in
`Coordinator.now`: forward, it grants nothing for one window plus the grace (then no grant
made before the step can be in any provider window), as a coordinator does that takes over
without the state of the one before it.

Written by hand: no library watches a clock for steps.
"""
from __future__ import annotations

import time
from typing import Callable

__all__ = ["MIN_TOLERANCE", "ClockSteps"]

MIN_TOLERANCE = 0.005  # seconds


class ClockSteps:
    """How far the wall clock stepped since the last look, beyond what the monotonic clock moved."""

    def __init__(self, tolerance: float, wall: Callable[[], float] | None = None,
                 monotonic: Callable[[], float] | None = None) -> None:
        # Steps up to the wire margin are its to absorb (specs.wire_margin); at least a few ms, above the
        # rounding of a float time of day, also when the grace (and so the margin) is set to 0.
        self.tolerance = max(tolerance, MIN_TOLERANCE)
        # Looked up at each call, as every other reader of the clocks does (tests replace time.time).
        self._wall = wall or (lambda: time.time())
        self._monotonic = monotonic or (lambda: time.monotonic())
        self._last: tuple[float, float, float] | None = None  # (wall, monotonic, how far apart they were read)

    def look(self) -> tuple[float, float]:
        """(the wall clock now, how far it stepped since the last look: 0.0 within the tolerance; < 0: back).

        The two clocks are read as close together as a few tries get them: a thread stopped between
        the two reads (a collection, a busy machine) must not look like a step.
        """
        for _ in range(3):
            before = self._monotonic()
            wall = self._wall()
            after = self._monotonic()
            if after - before < 0.001:
                break
        now = (wall, (before + after) / 2, (after - before) / 2)
        last, self._last = self._last, now
        if last is None:
            return wall, 0.0
        step = (wall - last[0]) - (now[1] - last[1])
        return wall, (step if abs(step) > self.tolerance + now[2] + last[2] else 0.0)
