"""Garbage collection held off while a burst of submissions is in flight (see BurstGC)."""
from __future__ import annotations

import gc
import time
from typing import Callable


class BurstGC:
    """Holds the automatic garbage collector off while a burst of submissions is in flight.

    A young-generation pass walks every object alive at that moment. During a burst
    that is mostly the thousands of requests being answered, which die a moment
    later anyway: about a tenth of a 5,000-request burst's CPU went to those walks.
    So while at least `high` submissions are in flight, automatic collection is off.
    It comes back as soon as at most `low` are, and after `max_seconds` at the
    latest; after such a forced return it stays on for `max_seconds`, so sustained
    overload cannot keep it off (cyclic garbage waits a few seconds at most).
    Reference counting, which frees almost everything, is never affected.
    """

    def __init__(self, *, high: int = 1000, low: int = 10, max_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.high, self.low, self.max_seconds = high, low, max_seconds
        self._clock = clock
        self.in_flight = 0
        self._paused_at: float | None = None
        self._not_before = float("-inf")

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def begin(self) -> None:
        self.in_flight += 1
        if self._paused_at is None:
            if self.in_flight >= self.high and gc.isenabled():
                now = self._clock()
                if now >= self._not_before:
                    gc.disable()
                    self._paused_at = now
        elif self._clock() - self._paused_at > self.max_seconds:
            self._resume(forced=True)

    def end(self) -> None:
        self.in_flight -= 1
        if self._paused_at is not None:
            if self.in_flight <= self.low:
                self._resume(forced=False)
            elif self._clock() - self._paused_at > self.max_seconds:
                self._resume(forced=True)

    def _resume(self, *, forced: bool) -> None:
        gc.enable()
        self._paused_at = None
        if forced:
            self._not_before = self._clock() + self.max_seconds


burst_gc = BurstGC()
