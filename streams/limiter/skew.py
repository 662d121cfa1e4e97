"""How far this worker's clock is from the coordinator's, measured from its own asks (NTP's arithmetic).

Grant times, starts and use-by times are the coordinator's clock; the worker compares them with its
own (docs/limiter.md, "Clocks"). A worker whose clock is behind by e sends up to e after use_by without
reporting it; one ahead by e sends a grant made ahead e before its start. Either way the request reaches
the provider e outside what the book counts for it, and only the wire margin (`WIRE_MARGIN`: the network
and the provider's queue after our write) has no other use. So a skew beyond half the wire margin
(0.05 s by default) is warned about, and the estimate is exported
(`blogstream_limiter_clock_offset_seconds`).

Every answer carries when the coordinator handled the ask (`arrived_at`) and when it sent the answer
(`sent_at`). With the worker's ask time t1 and answer time t4, the coordinator's clock minus ours lies
in [sent_at - t4, arrived_at - t1] whatever the two trips took (each copy of an ask left after t1, each
answer arrived after it was sent): an interval as wide as the round trip less the time in the
coordinator. The narrowest interval of the last minute is the estimate, and a warning is given only
when the whole interval is beyond the bound, so a slow or lopsided trip never raises a false alarm.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

log = logging.getLogger(__name__)

KEEP_SECONDS = 60.0  # intervals measured this long ago still count (clocks drift by ms a minute at most)
WARN_EVERY_SECONDS = 300.0


class ClockSkew:
    """The coordinator's clock minus this worker's, narrowed from answers (see the module's doc)."""

    def __init__(self, bound: float, publish: Callable[[float], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound  # |offset| beyond this is warned about
        self.publish = publish  # called with each new estimate (the gauge)
        self.clock = clock
        # (taken at, low, high), narrowest first: a sample wider than a newer one can never be the
        # narrowest of the minute again, so it is dropped (a sliding-window minimum: O(1) an answer,
        # where a scan of the minute's answers cost ~0.4 ms each at 170 answers a second)
        self.samples: deque[tuple[float, float, float]] = deque()
        self.low = -float("inf")
        self.high = float("inf")
        self._warned_at = -float("inf")

    @property
    def offset(self) -> float | None:
        return None if self.high == float("inf") else (self.low + self.high) / 2

    def answered(self, asked: float, reply: dict[str, Any], answered: float) -> None:
        """An answer to an ask made at `asked` came at `answered` (both this worker's clock)."""
        arrived, sent = reply.get("arrived_at"), reply.get("sent_at")
        if arrived is None or sent is None:  # answered from a recovered table: no times of its own
            return
        low, high = float(sent) - answered, float(arrived) - asked
        if low > high:  # impossible unless a clock was stepped in between: says nothing
            return
        now = self.clock()
        samples = self.samples
        while samples and samples[-1][2] - samples[-1][1] > high - low:
            samples.pop()
        samples.append((now, low, high))
        while samples[0][0] < now - KEEP_SECONDS:
            samples.popleft()
        _, self.low, self.high = samples[0]  # the narrowest of the last minute (the oldest of equals)
        offset = (self.low + self.high) / 2
        if self.publish is not None:
            self.publish(offset)
        if (self.low > self.bound or self.high < -self.bound) and now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(
                "limiter: this worker's clock is %.3f s %s the coordinator's (between %.3f and %.3f s, from "
                "its asks' round trips); beyond %.3f s a permit's request can reach the provider outside what "
                "the limiter counts for it. Run NTP on every worker (docs/limiter.md, Clocks).",
                abs(offset), "behind" if offset > 0 else "ahead of", abs(self.low if offset > 0 else self.high),
                abs(self.high if offset > 0 else self.low), self.bound,
            )
