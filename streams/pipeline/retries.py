"""How long an event that met an infrastructure failure waits before it runs again, and what ends the wait.

A stage's handler turns provider failures into outcomes itself; what reaches
the runner is the broker or the database failing. Such an event waits and is
tried again (streams/pipeline/runner.py): long enough not to spin while the
outage lasts, short enough that work resumes with the broker, not a back-off
later.
"""
from __future__ import annotations

import asyncio
import random
import time


def retry_delay(failures: int, cap: float = 10.0) -> float:
    """Seconds before an event that failed `failures` times in a row runs again: 2 s doubling to `cap`,
    each cut by up to a quarter at random so the events of one outage do not all come back at once."""
    return min(cap, 2.0 ** failures) * random.uniform(0.75, 1.0)


class RetryPauses:
    """Where events that met an infrastructure failure wait, and what ends their wait early.

    An outage makes many events fail and wait; when it clears, the first event
    that works again ends every wait at once (at most once per `wake_every`
    seconds), so work resumes with the broker or the database rather than one
    back-off later. An event that fails again waits again, longer.
    """

    def __init__(self, wake_every: float = 2.0) -> None:
        self.wake_every = wake_every
        self.waiting = 0
        self._over: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken_at = float("-inf")

    async def pause(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self._over is None or self._loop is not loop:  # an Event belongs to one loop (tests run many)
            self._over, self._loop = asyncio.Event(), loop
        over = self._over
        self.waiting += 1
        try:
            await asyncio.wait_for(over.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            self.waiting -= 1

    def succeeded(self) -> None:
        """An event ran to its end: whatever failed works again."""
        if not self.waiting or self._over is None:
            return
        now = time.monotonic()
        if now - self._woken_at < self.wake_every:
            return
        self._woken_at = now
        self._over.set()
        self._over = None  # the next failure waits on a fresh one


RETRIES = RetryPauses()  # shared by the worker's runners: one broker, one database
