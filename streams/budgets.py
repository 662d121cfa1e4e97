"""Budget arithmetic for the global limiter: windows, slots and fair choice.

Pure and synchronous, so it is unit-tested without Kafka. `streams.limiter`
runs one `BudgetBook` inside the single coordinator and persists its state.

Safety rule: a permit granted at `t` may reach the provider as late as
`t + grace` (the worker checks before sending). A provider counting arrivals in
any window of length W therefore sees only grants from an interval of length
W + grace, so each rate budget caps grants in every such interval.
"""
from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class RateBudget:
    """At most `limit` units in any `window + grace` seconds (requests or tokens)."""

    name: str
    limit: int
    window: float
    grace: float
    paced: bool = False  # spread grants evenly instead of bursting at a window's start
    # Adaptive share of `limit`: shrinks when the provider pushes back (someone
    # else uses the same key), grows back while it does not.
    factor: float = 1.0
    external: float = 0.0  # units the provider says were used that we did not grant
    external_until: float = 0.0
    entries: deque = field(default_factory=deque)  # [granted_at, amount, grant_id]
    last_grant_at: float = -math.inf
    granted_total: float = 0.0

    @property
    def span(self) -> float:
        return self.window + self.grace

    def _expire(self, now: float) -> None:
        horizon = now - self.span
        while self.entries and self.entries[0][0] <= horizon:
            self.entries.popleft()
        if self.external and now >= self.external_until:
            self.external = 0.0

    def used(self, now: float) -> float:
        self._expire(now)
        return sum(e[1] for e in self.entries)

    def used_in_last(self, now: float, seconds: float) -> float:
        return sum(e[1] for e in self.entries if e[0] > now - seconds)

    def effective_limit(self) -> float:
        return max(1.0, math.floor(self.limit * self.factor) - self.external)

    def pace_interval(self) -> float:
        return self.span / self.effective_limit() if self.paced else 0.0

    def fits(self, now: float, amount: float) -> bool:
        if now < self.last_grant_at + self.pace_interval():
            return False
        # A single ask larger than the whole budget could never fit: let it
        # through alone on an empty window rather than wait forever.
        if amount > self.effective_limit():
            return self.used(now) == 0
        return self.used(now) + amount <= self.effective_limit()

    def next_room_at(self, now: float, amount: float) -> float:
        """Earliest time `amount` could fit, assuming nothing else is granted."""
        at = max(now, self.last_grant_at + self.pace_interval())
        excess = self.used(now) + min(amount, self.effective_limit()) - self.effective_limit()
        if excess > 0:
            freed = 0.0
            for granted_at, amt, _ in self.entries:
                freed += amt
                if freed >= excess:
                    at = max(at, granted_at + self.span)
                    break
        return at

    def add(self, now: float, amount: float, grant_id: str) -> None:
        self.entries.append([now, amount, grant_id])
        self.last_grant_at = now
        self.granted_total += amount

    def settle(self, grant_id: str, actual: float) -> bool:
        """Replace a reservation by what the call really cost (never below 0)."""
        for entry in self.entries:
            if entry[2] == grant_id:
                entry[1] = max(0.0, float(actual))
                return True
        return False

    # --- adaptation to pressure from outside ------------------------------
    def on_throttled(self, now: float) -> None:
        """The provider said 429 although we stayed within our count: shrink."""
        self.factor = max(0.1, self.factor * 0.7)

    def on_remaining(self, now: float, provider_limit: int | None, remaining: int | None) -> None:
        """`x-ratelimit-remaining-*` lower than our own count explains: outside use."""
        if remaining is None:
            return
        limit = provider_limit or self.limit
        provider_used = limit - remaining
        ours = self.used_in_last(now, self.window)
        outside = provider_used - ours
        if outside > max(2.0, 0.02 * self.limit):
            self.external = max(self.external * 0.5, outside)
            self.external_until = now + self.window

    def recover(self, seconds: float) -> None:
        """Additive increase: back to the full budget within ~10 windows of calm."""
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + 0.1 * seconds / self.window)

    def snapshot(self) -> dict[str, Any]:
        return {
            "entries": [list(e) for e in self.entries],
            "last_grant_at": self.last_grant_at if self.last_grant_at > -math.inf else None,
            "factor": self.factor,
            "external": self.external,
            "external_until": self.external_until,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.entries = deque([list(e) for e in state.get("entries", [])])
        last = state.get("last_grant_at")
        self.last_grant_at = -math.inf if last is None else float(last)
        self.factor = float(state.get("factor", 1.0))
        self.external = float(state.get("external", 0.0))
        self.external_until = float(state.get("external_until", 0.0))


@dataclass
class SlotBudget:
    """Requests of one site in flight (generate start → publish end), across all workers."""

    name: str
    limit: int
    holders: dict[str, float] = field(default_factory=dict)  # request_id -> since
    lease_seconds: float = 3600.0  # reclaim slots of requests that vanished

    def _expire(self, now: float) -> None:
        for rid in [r for r, t in self.holders.items() if now - t > self.lease_seconds]:
            del self.holders[rid]

    def fits(self, now: float, request_id: str) -> bool:
        self._expire(now)
        return request_id in self.holders or len(self.holders) < self.limit

    def add(self, now: float, request_id: str) -> None:
        self.holders.setdefault(request_id, now)

    def release(self, request_id: str) -> bool:
        return self.holders.pop(request_id, None) is not None

    def snapshot(self) -> dict[str, Any]:
        return {"holders": dict(self.holders), "limit": self.limit}

    def restore(self, state: dict[str, Any]) -> None:
        self.holders = {k: float(v) for k, v in state.get("holders", {}).items()}


@dataclass
class Ask:
    ask_id: str
    site_id: str
    request_id: str
    needs: dict[str, float]  # rate budget name -> amount
    slot_limit: int | None  # when set, the request also needs one of its site's slots
    weight: float
    arrived_at: float
    seq: int
    reply: Any = None  # how to answer (set by the Kafka glue)


@dataclass
class Grant:
    ask: Ask
    grant_id: str
    granted_at: float
    use_by: float

    def as_reply(self) -> dict[str, Any]:
        return {
            "ask_id": self.ask.ask_id,
            "grant_id": self.grant_id,
            "granted_at": self.granted_at,
            "use_by": self.use_by,
            "needs": self.ask.needs,
        }


class BudgetBook:
    """Every budget and every waiting ask; grants by weighted fair queuing.

    Each ask waits in its site's line. Among asks that fit right now, the one
    whose site has received the least of the contested budget (divided by the
    site's weight) goes first: max-min fair, and work-conserving because an ask
    that does not fit never holds back one that does.
    """

    def __init__(self, rate_specs: dict[str, dict[str, Any]], *, grace: float, slot_default: int = 20):
        self.grace = grace
        self.rate_specs = rate_specs  # prefix -> {"limit", "window", "paced"}; "wix:" per site
        self.rates: dict[str, RateBudget] = {}
        self.slots: dict[str, SlotBudget] = {}
        self.slot_default = slot_default
        self.waiting: dict[str, Ask] = {}
        self.vtime: dict[tuple[str, str], float] = {}  # (budget, site) -> normalised service
        self._seq = itertools.count()
        self._grant_seq = itertools.count()
        self.instance = ""
        self.dirty: set[str] = set()  # budget names changed since the last persist

    # --- budgets ------------------------------------------------------------
    def rate(self, name: str) -> RateBudget:
        budget = self.rates.get(name)
        if budget is None:
            spec = self.rate_specs.get(name) or self.rate_specs[name.split(":", 1)[0] + ":"]
            budget = RateBudget(name, int(spec["limit"]), float(spec["window"]), self.grace, bool(spec.get("paced", False)))
            self.rates[name] = budget
        return budget

    def slot(self, site_id: str, limit: int | None = None) -> SlotBudget:
        name = f"slots:{site_id}"
        budget = self.slots.get(name)
        if budget is None:
            budget = self.slots[name] = SlotBudget(name, limit or self.slot_default)
        elif limit:
            budget.limit = limit
        return budget

    # --- asks ---------------------------------------------------------------
    def add_ask(self, ask: Ask) -> Ask:
        known = self.waiting.get(ask.ask_id)
        if known is not None:  # a re-ask after a timeout: same place in line, new reply route
            known.reply = ask.reply
            return known
        ask.seq = next(self._seq)
        self.waiting[ask.ask_id] = ask
        for budget in ask.needs:
            key = (budget, ask.site_id)
            floor = min((v for (b, s), v in self.vtime.items() if b == budget and self._site_waits(s, budget)), default=0.0)
            self.vtime[key] = max(self.vtime.get(key, 0.0), floor)
        return ask

    def _site_waits(self, site_id: str, budget: str) -> bool:
        return any(a.site_id == site_id and budget in a.needs for a in self.waiting.values())

    def drop_asks(self) -> None:
        self.waiting.clear()

    def _fits(self, ask: Ask, now: float) -> bool:
        if ask.slot_limit is not None and not self.slot(ask.site_id, ask.slot_limit).fits(now, ask.request_id):
            return False
        return all(self.rate(b).fits(now, amount) for b, amount in ask.needs.items())

    def _fair_key(self, ask: Ask) -> tuple:
        primary = next(iter(ask.needs), "")
        return (self.vtime.get((primary, ask.site_id), 0.0), ask.seq)

    def grant_ready(self, now: float) -> list[Grant]:
        grants = []
        while True:
            ready = [a for a in self.waiting.values() if self._fits(a, now)]
            if not ready:
                return grants
            ask = min(ready, key=self._fair_key)
            grants.append(self._grant(ask, now))

    def _grant(self, ask: Ask, now: float) -> Grant:
        del self.waiting[ask.ask_id]
        grant_id = f"{self.instance}{next(self._grant_seq)}"
        if ask.slot_limit is not None:
            self.slot(ask.site_id, ask.slot_limit).add(now, ask.request_id)
            self.dirty.add(f"slots:{ask.site_id}")
        for budget, amount in ask.needs.items():
            self.rate(budget).add(now, amount, grant_id)
            self.dirty.add(budget)
            key = (budget, ask.site_id)
            self.vtime[key] = self.vtime.get(key, 0.0) + amount / max(ask.weight, 1e-6)
        return Grant(ask, grant_id, now, now + self.grace)

    def next_wakeup(self, now: float) -> float | None:
        """When something waiting could next fit (None: nothing waits)."""
        best = None
        for ask in self.waiting.values():
            if ask.slot_limit is not None and not self.slot(ask.site_id, ask.slot_limit).fits(now, ask.request_id):
                continue  # only a release (an event) frees a slot
            at = max((self.rate(b).next_room_at(now, amt) for b, amt in ask.needs.items()), default=now)
            best = at if best is None else min(best, at)
        return best

    # --- after the call -----------------------------------------------------
    def settle(self, budget: str, grant_id: str, actual: float) -> None:
        if budget in self.rates and self.rates[budget].settle(grant_id, actual):
            self.dirty.add(budget)

    def release_slot(self, site_id: str, request_id: str) -> None:
        if self.slot(site_id).release(request_id):
            self.dirty.add(f"slots:{site_id}")

    def feedback(self, now: float, budget: str, *, throttled: bool, limit: int | None, remaining: int | None) -> None:
        rate = self.rate(budget)
        if throttled:
            rate.on_throttled(now)
        rate.on_remaining(now, limit, remaining)
        self.dirty.add(budget)

    def recover(self, seconds: float) -> None:
        for rate in self.rates.values():
            rate.recover(seconds)

    # --- persistence (the coordinator's changelog-backed table) -------------
    def snapshot(self, name: str) -> dict[str, Any]:
        if name.startswith("slots:"):
            return self.slots[name].snapshot()
        return self.rates[name].snapshot()

    def restore(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for name, state in items:
            if name.startswith("slots:"):
                self.slot(name.split(":", 1)[1], state.get("limit")).restore(state)
            else:
                self.rate(name).restore(state)

    # --- figures ------------------------------------------------------------
    def usage(self, name: str, now: float) -> dict[str, float]:
        rate = self.rate(name)
        used_window = rate.used_in_last(now, rate.window) if rate.entries else 0.0
        rate._expire(now)
        waiting = sum(1 for a in self.waiting.values() if name in a.needs)
        return {
            "limit": rate.limit,
            "effective_limit": rate.effective_limit(),
            "used_in_window": used_window,
            "waiting": waiting,
            "granted_total": rate.granted_total,
        }
