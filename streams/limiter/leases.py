"""Leases: several units of a budget with plenty of room, granted to one worker at once.

While a request budget has plenty of room, the book may grant one ask several
units for a period (`lease_seconds`, or its spec's), to be sent any time in
[start, start + period + grace]. Its entry counts from the grant until
start + period + W + grace (it is kept at start + period, the last moment a
unit may be taken), so the book's safety rule holds for every unit. The worker
takes units locally, without a round trip, and gives back the ones it did not
take when the lease ends (`end_lease`). docs/limiter.md, "Leases".

A mixin of `BudgetBook` (book.py), whose state it reads: the rules of when a
lease costs nobody anything are the book's, kept here so each file reads alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streams.limiter.asks import Ask, Grant

if TYPE_CHECKING:
    from streams.limiter.rates import RateBudget


class LeaseRules:
    """When an ask is answered with a lease, for how long, and what comes back when it ends."""

    lease_seconds: float
    lease_below: float
    lease_share: float
    grace: float
    rates: dict[str, "RateBudget"]
    _refused: dict[str, int]
    # (budget, reason) -> leases refused since the coordinator last exported them. Reasons: "contended"
    # (an ask a pass found no room for waits), "pushed back" (a 429 share cut or outside use), "paced" (the
    # pacing schedule is not ready), "too small" (under 2 units), "near the limit" (over lease_below with it).
    lease_refusals: dict[tuple[str, str], int]

    def rate(self, name: str) -> "RateBudget": ...
    def _spec(self, name: str) -> dict[str, Any]: ...
    def late_use_seconds(self) -> float: ...
    def _new_grant_id(self) -> str: ...

    def _lease_units(self, ask: Ask, now: float) -> int:
        """How many units `ask` may take as a lease right now (0: grant it one permit as usual).

        Only a one-budget ask without a slot, only while no ask a pass found no
        room for waits on that budget (an ask that just came, not yet looked
        at, is no sign of contention: counting those let a worker's one-by-one
        asks refuse the others' leases, which sent their permits one by one in
        turn), nobody pushes back on it (no 429 share cut, no outside use),
        and it would stay below `lease_below` of its limit with the lease: a
        lease then costs nobody anything, and near the limit every unit goes
        through the fair line one by one as before. A lease takes one place in
        the pacing schedule, and its rate is at most `lease_share` of the
        budget's (so a few workers' leases cannot make a burst the pacing
        would not allow).
        """
        if self.lease_seconds <= 0 or ask.lease < 2 or ask.slot_limit is not None or len(ask.needs) != 1:
            return 0
        budget, amount = next(iter(ask.needs.items()))
        if amount != 1:
            return 0
        if self._refused.get(budget):
            return self._no_lease(budget, "contended")
        rate = self.rate(budget)
        if rate.factor < 1.0 or rate.external:
            return self._no_lease(budget, "pushed back")
        if not rate._pace_ok(now):
            return self._no_lease(budget, "paced")
        limit = rate.effective_limit()
        units = min(int(ask.lease), int(self.lease_share * limit * self._lease_period(budget) / rate.span))
        if units < 2:
            return self._no_lease(budget, "too small")
        if rate.used(now) + units > self.lease_below * limit:
            return self._no_lease(budget, "near the limit")
        return units

    def _no_lease(self, budget: str, reason: str) -> int:
        """A lease asked for and refused: counted by budget and reason (the coordinator exports them)."""
        key = (budget, reason)
        self.lease_refusals[key] = self.lease_refusals.get(key, 0) + 1
        return 0

    def _lease_period(self, budget: str) -> float:
        """A lease's length: the budget's own (`lease_seconds` in its spec: a site's Wix budget), else the book's."""
        return float(self._spec(budget).get("lease_seconds") or self.lease_seconds)

    def _grant_lease(self, ask: Ask, grant_id: str, now: float, units: int) -> Grant:
        budget = ask.primary
        until = now + self._lease_period(budget)
        self.rate(budget).add(now, units, grant_id, ask.ask_id, ask.site_id, until=until)
        # No fair-queuing charge: the units serve every site on the asking
        # worker, and only while nobody waits on the budget (nothing to share).
        return Grant(ask, grant_id, now, until + self.grace, until + self.late_use_seconds(), made_at=now,
                     lease_units=units, lease_until=until)

    def lease(self, ask: Ask, now: float) -> Grant | None:
        """A lease for `ask` now, or None: never queued (a worker refilling its units asks this way)."""
        units = self._lease_units(ask, now)
        return self._grant_lease(ask, self._new_grant_id(), now, units) if units else None

    def end_lease(self, budget: str, grant_id: str, taken: float) -> None:
        """A lease ended with `taken` units used: the rest were never sent, their room goes back."""
        rate = self.rates.get(budget)
        entry = rate.index.get(grant_id) if rate is not None else None
        if entry is not None and taken < entry[1]:
            rate.settle(grant_id, taken)
