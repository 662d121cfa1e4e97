"""Which workers the coordinator still hears from, so that a dead worker's site slots go back.

A site's slot is held from its request's first permit to its outcome (book.py),
across stages and workers. A worker killed mid-request cannot release its slots;
the partition's next owner takes the request up again, but only when its reading
reaches it, which can be minutes later behind that site's other requests. Until
then the slot was lost, and a site whose slots were all lost ran at a fraction
of its cap for up to an hour (`SlotBudget.lease_seconds`; `make chaos` found it).

So each slot remembers the worker that last asked for its request (`owner`), every
worker says it is alive every ALIVE_EVERY seconds (streams/limiter/alive.py), and a
worker not heard from for GONE_AFTER seconds is gone: the slots it held for requests
still at their first stage are released, and such a request, taken up again later,
asks for a slot like any other. (A request a later stage has asked for keeps its
slot: taken up again, it asks for none, so releasing it would let its site run over
the cap; see rates.SlotBudget.) Its asks still waiting are dropped too: granted,
they would hold budget nobody sends.

A worker restarted under the same name (its reply topic, streams/app.py) is gone at
once: the new process's first message, from the same address, says the old one died.

Silence on our side is nobody's fault: when the coordinator heard nothing at all for
HEARING_GAP seconds (the broker away, its own event loop stalled, a takeover), every
worker gets GONE_AFTER seconds from the moment it hears again.

Written by hand: no library keeps a membership list fed by our own messages, and
the consumer group's members (the broker's view) are not the processes that hold slots.
"""
from __future__ import annotations

import math

__all__ = ["ALIVE_EVERY", "GONE_AFTER", "HEARING_GAP", "WorkerRoll"]

ALIVE_EVERY = 5.0  # seconds between a worker's "alive" messages
GONE_AFTER = 30.0  # six of them missed, while others were heard: the worker is gone
HEARING_GAP = 15.0  # nothing heard from anyone for this long: the silence was ours


class WorkerRoll:
    """When each worker was last heard from, on the coordinator's clock."""

    def __init__(self, gone_after: float = GONE_AFTER, hearing_gap: float = HEARING_GAP) -> None:
        self.gone_after, self.hearing_gap = gone_after, hearing_gap
        self.seen: dict[str, float] = {}  # worker -> when last heard
        self.heard_at = -math.inf  # the last message from anyone
        self._routes: dict[str, str] = {}  # reply address -> the worker process last heard from there
        self._replaced: set[str] = set()  # workers whose address a newer process answers from

    def shift(self, seconds: float) -> None:
        """The clock stepped by `seconds` (limiter/clock_steps.py): what was heard keeps its age."""
        self.seen = {worker: at + seconds for worker, at in self.seen.items()}
        self.heard_at += seconds

    def heard(self, now: float) -> None:
        """Any message came: after a stretch of silence, everyone starts afresh from now."""
        if now - self.heard_at > self.hearing_gap:
            for worker in self.seen:
                self.seen[worker] = now
        self.heard_at = now

    def saw(self, worker: str, now: float, route: str = "") -> None:
        """`worker` was heard, from reply address `route` (if known)."""
        if not worker:
            return
        self.seen[worker] = now
        if route:
            before = self._routes.get(route)
            if before is not None and before != worker:
                # Restarted: the old process is dead. (Two live processes under one name would take
                # turns here, but they already share one reply topic: each must have its own name.)
                self._replaced.add(before)
            self._routes[route] = worker

    def gone(self, now: float) -> set[str]:
        """Workers silent for `gone_after` seconds while others were heard; each is named once."""
        dead, self._replaced = self._replaced & set(self.seen), set()  # replaced: gone whatever we hear
        if now - self.heard_at <= self.hearing_gap:  # else we hear nobody: silence proves nothing
            dead |= {worker for worker, at in self.seen.items() if now - at > self.gone_after}
        for worker in dead:
            del self.seen[worker]
        for route in [r for r, worker in self._routes.items() if worker in dead]:
            del self._routes[route]
        return dead
