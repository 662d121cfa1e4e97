"""Budget arithmetic for the global limiter: windows, pacing, slots and fair choice.

Pure and synchronous, so it is unit-tested without Kafka. `streams.limiter.coordinator`
runs one `BudgetBook` inside the single coordinator and persists its state
(see `BudgetBook.take_dirty` / `restore`).

Safety rule: a permit granted at `t` may reach the provider as late as
`t + grace` (the worker checks before sending). A provider counting arrivals in
any window of length W therefore sees only grants from an interval of length
W + grace, so each rate budget caps grants in every such interval. The cost is
a utilization ceiling of W / (W + grace) (99 % for W = 30 s, grace = 0.3 s).

Leases (several units at once, taken by a worker without a round trip each): leases.py.

Costs: granting, settling and expiring are O(1) per grant (running sums, an
index by grant id); a scheduling pass is O((groups + grants) x log): a heap of one entry per
(site, lane, budgets) group of waiting asks (line.py), not one per ask.
Memory: the waiting asks, the grants in the windows, and the sites and
per-site budgets active lately (`prune`); nothing grows with time or with the
number of sites ever seen.
"""
from __future__ import annotations

import heapq
import itertools
import math
from typing import Any, Callable, Iterable

from streams.limiter.asks import BULK, INTERACTIVE, LANE_RANK, Ask, Grant
from streams.limiter.leases import LeaseRules
from streams.limiter.line import AskGroups
from streams.limiter.rates import RateBudget
from streams.limiter.recovered import recovered_answers
from streams.limiter.reserve import InteractiveReserve
from streams.limiter.slots import SlotBudget
from streams.limiter.sweep import Sweep
from streams.limiter.workers import WorkerRoll

__all__ = ["BULK", "INTERACTIVE", "LANE_RANK", "Ask", "BudgetBook", "Grant"]  # the asks' names, for the book's callers


class BudgetBook(LeaseRules):
    """Every budget and every waiting ask; grants by weighted fair queuing.

    Among asks that fit right now, the one whose site has received the least of
    the contested budget (divided by the site's weight) goes first: max-min
    fair, and work-conserving because an ask that does not fit never holds back
    one that does. A site that comes back after a pause starts at the service
    level of the sites still waiting (no credit for the time it was away).

    Lanes: every interactive ask goes before every bulk ask, and fair shares
    are counted apart in each lane (a site's bulk work does not lower its
    interactive share). A bulk ask gets only room no interactive ask is
    waiting for: once an interactive ask does not fit a budget in a pass, no
    bulk ask takes from that budget in that pass, so a big interactive ask is
    not starved by small bulk ones. Room nobody interactive wants goes to bulk.
    A bulk ask is granted only for room open now, never ahead (`lookahead`):
    room that opens a moment later goes to an interactive ask arriving meanwhile,
    and it leaves the interactive reserve free (reserve.py).
    """

    def __init__(
        self, rate_specs: dict[str, dict[str, Any]], *, grace: float, slot_default: int = 20, lookahead: float = 0.0,
        lease_seconds: float = 0.0, lease_below: float = 0.5,
    ):
        self.grace = grace
        self.lease_seconds = lease_seconds  # leases (see `_lease_units`); 0 turns them off
        self.lease_below = lease_below
        self.lease_share = 0.25  # a lease's rate (units / lease_seconds) is at most this part of the budget's
        # Grant an ask up to this long before its room opens, for a start time: the answer
        # travels while the room is still taken, hiding the Kafka round trip (`grant_ready`).
        self.lookahead = lookahead
        self.rate_specs = rate_specs  # prefix -> {"limit", "window", "paced"}; "wix_requests:" per site
        self.rates: dict[str, RateBudget] = {}
        self._written_unacked: set[str] = set()  # budgets written since the last acked pass (`persisted`)
        self.slots: dict[str, SlotBudget] = {}
        self.slot_default = slot_default
        self.waiting: dict[str, Ask] = {}
        self.vtime: dict[tuple[str, str], float] = {}  # (budget, site) -> normalised service
        self._waiting_sites: dict[str, dict[str, int]] = {}  # budget -> site -> asks waiting
        self._refused: dict[str, int] = {}  # budget -> asks on it a pass found no room for, still waiting
        self.lease_refusals: dict[tuple[str, str], int] = {}  # see leases.py
        # budget -> heap of (amount, ask_id) of the asks waiting on it. Lazy: a granted ask's entry stays until
        # it reaches the top or garbage outgrows live entries (`_unwait` rebuilds it): at most ~2x the live asks.
        self._amounts: dict[str, list[tuple[float, str]]] = {}
        self._live: dict[str, int] = {}  # budget -> asks waiting on it (the live part of its heap)
        self._interactive: dict[str, int] = {}  # budget -> interactive asks waiting on it
        self._floors: dict[tuple[str, bool], list[tuple[float, str]]] = {}  # (budget, bulk) -> see `_floor`
        self.reserve = InteractiveReserve()  # what bulk asks leave free for interactive ones (reserve.py)
        self.groups = AskGroups(self._fair_key)  # the waiting asks by their place in the fair order (line.py)
        # A site's virtual time is kept while it waits and as long after as it could matter (`prune`).
        self.idle_keep = max((float(spec["window"]) for spec in rate_specs.values()), default=60.0)
        self._idle_since: dict[tuple[str, str], float] = {}
        self._stopped: set[tuple[str, str]] = set()  # (budget, site)s that stopped waiting since the last prune
        self._dropped: set[str] = set()  # table keys of state `prune` dropped: deleted at the next persist
        self._seq = itertools.count()
        self._grant_seq = itertools.count()
        self.instance = ""
        self.dirty_slots: set[str] = set()
        self._changed: set[str] = set()  # names of the rates with dirty parts (rates.DirtyParts)
        self.workers = WorkerRoll()  # who still holds slots: a gone worker's slots are released (`expire`)
        self._fresh: list[Ask] = []  # asks no pass has looked at yet
        self._sweeps, self._again = [Sweep() for _ in range(5)], set()  # the upkeep's rounds: `expire`, `prune`

    # --- budgets ------------------------------------------------------------
    def rate(self, name: str) -> RateBudget:
        budget = self.rates.get(name)
        if budget is None:
            spec = self._spec(name)
            budget = RateBudget(name, int(spec["limit"]), float(spec["window"]), self.grace,
                                bool(spec.get("paced", False)), margin=float(spec.get("margin", 0.0)))
            self.rates[name] = budget
            budget.dirty.enlist(self._changed, name)
        return budget

    def _spec(self, name: str) -> dict[str, Any]:
        return self.rate_specs.get(name) or self.rate_specs[name.split(":", 1)[0] + ":"]

    def slot(self, site_id: str, limit: int | None = None) -> SlotBudget:
        name = f"slots:{site_id}"
        budget = self.slots.get(name)
        if budget is None:
            budget = self.slots[name] = SlotBudget(name, limit or self.slot_default)
        elif limit:
            budget.limit = limit
        return budget

    def late_use_seconds(self) -> float:
        """How long after its grant a permit may still be used, if its late send is reported: the report must
        reach the coordinator before the grant leaves the window (W + grace); half the shortest window (<= 15 s)."""
        windows = [float(spec["window"]) for spec in self.rate_specs.values()] or [60.0]
        return max(self.grace, min(15.0, min(windows) / 2))

    # --- asks ---------------------------------------------------------------
    def add_ask(self, ask: Ask) -> Ask:
        known = self.waiting.get(ask.ask_id)
        if known is not None:  # a re-ask after a timeout: same place in line, new reply route
            known.reply = ask.reply
            return known
        ask.seq = next(self._seq)
        fair_id, bulk = ask.fair_id, ask.lane != INTERACTIVE
        for budget in ask.needs:
            sites = self._waiting_sites.setdefault(budget, {})
            key = (budget, fair_id)
            if not sites.get(fair_id):
                # The floor of its own lane: the other lane's service is another count.
                floor = self._floor(budget, bulk)
                if floor is not None:
                    self.vtime[key] = max(self.vtime.get(key, 0.0), floor)
                heapq.heappush(self._floors.setdefault((budget, bulk), []), (self.vtime.get(key, 0.0), fair_id))
            sites[fair_id] = sites.get(fair_id, 0) + 1
            self._idle_since.pop(key, None)
            self._live[budget] = self._live.get(budget, 0) + 1
            if not bulk:
                self._interactive[budget] = self._interactive.get(budget, 0) + 1
            heapq.heappush(self._amounts.setdefault(budget, []), (ask.needs[budget], ask.ask_id))
        self.waiting[ask.ask_id] = ask
        self.groups.add(ask)
        self._fresh.append(ask)
        return ask

    def _floor(self, budget: str, bulk: bool) -> float | None:
        """The least service of the sites waiting on `budget` in one lane (None: none waits).

        From a heap of (service, site) kept lazily: a site that stopped waiting
        leaves it when it comes to the top, and one served since is put back at
        its service then (service only grows while a site waits). O(log sites)
        a call, where taking the minimum over the waiting sites was O(sites).
        """
        heap = self._floors.get((budget, bulk))
        sites = self._waiting_sites.get(budget, {})
        if heap is not None and len(heap) > 2 * len(sites) + 32:  # mostly left or doubled: the waiting only
            heap[:] = [(self.vtime.get((budget, s), 0.0), s) for s, n in sites.items() if n and ("|" in s) == bulk]
            heapq.heapify(heap)
        while heap:
            service, site = heap[0]
            if not sites.get(site):
                heapq.heappop(heap)
            elif (now_at := self.vtime.get((budget, site), 0.0)) != service:
                heapq.heapreplace(heap, (now_at, site))
            else:
                return service
        return None

    def _smallest(self, budget: str) -> float | None:
        """The smallest amount an ask waiting on `budget` needs (None: none waits)."""
        heap = self._amounts.get(budget)
        while heap and heap[0][1] not in self.waiting:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _unwait(self, ask: Ask) -> None:
        del self.waiting[ask.ask_id]
        self.groups.remove(ask)
        fair_id = ask.fair_id
        for budget in ask.needs:
            if ask.waited and self._refused.get(budget, 0) > 0:
                self._refused[budget] -= 1
            if ask.lane == INTERACTIVE:
                if self._interactive.get(budget, 0) > 1:
                    self._interactive[budget] -= 1
                else:
                    self._interactive.pop(budget, None)
            sites = self._waiting_sites.get(budget, {})
            left = sites.get(fair_id, 0) - 1
            if left > 0:
                sites[fair_id] = left
            else:
                sites.pop(fair_id, None)
                self._stopped.add((budget, fair_id))
            live = self._live.get(budget, 0) - 1
            if live <= 0:  # nobody waits on it any more: no heap, no entry at all
                self._live.pop(budget, None)
                self._amounts.pop(budget, None)
                self._floors.pop((budget, False), None)
                self._floors.pop((budget, True), None)
                if not sites:
                    self._waiting_sites.pop(budget, None)
                continue
            self._live[budget] = live
            heap = self._amounts.get(budget)
            if heap is not None and len(heap) > 2 * live + 32:
                # More granted entries than waiting ones: keep the live ones (once each).
                # O(heap) after at least `live` removals since the last rebuild: O(1) amortized.
                kept = {entry[1]: entry for entry in heap if entry[1] in self.waiting}
                heap[:] = kept.values()
                heapq.heapify(heap)

    def drop_asks(self) -> None:
        self._stopped.update(self.vtime)  # nobody waits now: every site's service is prune's to look at
        self.waiting.clear()
        self._floors.clear()
        self.groups.clear()
        self._fresh.clear()
        self._waiting_sites.clear()
        self._refused.clear()
        self._amounts.clear()
        self._live.clear()
        self._interactive.clear()

    def _fair_key(self, ask: Ask) -> tuple[int, float, int]:
        return (LANE_RANK.get(ask.lane, 1), self.vtime.get((ask.primary, ask.fair_id), 0.0), ask.seq)

    def grant_ready(self, now: float) -> list[Grant]:
        """Grant every waiting ask that fits by `now + lookahead`, fairest first.

        An ask whose room opens only after `now` is granted for that moment
        (its start): its window entry counts from the start, and the worker
        does not send before it. So the permit is usable the moment its room
        opens, however long the answer took to travel.
        """
        fresh, self._fresh = self._fresh, []
        try:
            return self._grant_ready(now)
        finally:
            for ask in fresh:  # looked at and left waiting: no room when it came
                if ask.ask_id in self.waiting:
                    ask.waited = True
                    for budget in ask.needs:
                        self._refused[budget] = self._refused.get(budget, 0) + 1

    def _grant_ready(self, now: float) -> list[Grant]:
        grants: list[Grant] = []
        if not self.waiting:
            return grants
        horizon = now + self.lookahead
        # A budget without room for the smallest amount waiting on it has room
        # for none of them (and grants only use room up): skip those asks. In a
        # saturated budget that is every pass but one per pacing interval.
        open_: dict[str, bool] = {}
        for budget, sites in self._waiting_sites.items():
            smallest = self._smallest(budget) if sites else None
            open_[budget] = smallest is not None and self.rate(budget).next_room_at(now, smallest) <= horizon
        slot_only = self.groups.has_kind(())  # asks for a slot alone (generate.py: an article from the ledger)
        if not slot_only and not any(open_.values()):
            return grants
        # The groups of waiting asks in fair order (line.py); `still_open`: budgets that may have room for someone.
        with self.groups.walk(lambda budgets: all(open_.get(b) for b in budgets)) as line:
            closed: dict[str, float] = {}
            wanted: set[str] = set()  # budgets an interactive ask found no room in: bulk asks keep off them
            still_open = {b for b, is_open in open_.items() if is_open}
            passed: dict[tuple[str, str], list] = {}  # (site, request) -> [(ask, group, place)] passed over
            again: set[str] = set()  # of those, the asks back in line: their request got a slot
            while (still_open or slot_only) and (entry := line.pop()) is not None:
                rank, vtime, seq, ask_id, key = entry
                ask = self.waiting[ask_id]
                current = self._fair_key(ask)
                if current[1] > vtime:  # its site was served meanwhile: back in line
                    line.push((*current, ask_id, key))
                    continue
                if not still_open.issuperset(ask.needs) or (rank and not wanted.isdisjoint(ask.needs)):
                    # Nobody in its group can have room now, nor in any later group of its kind (budgets
                    # only close in a pass, and after a bulk ask come only bulk ones): done for this pass.
                    line.close(key[1])
                    continue
                # Grants only use room up, so an ask that does not fit by the horizon will not later in
                # this pass either. A bulk ask is never granted ahead: that room may be an interactive ask's.
                start = self._start_by(ask, now, now if rank else horizon, closed, leave_reserve=bool(rank))
                if start is not None:
                    # Its request gets a slot: its asks passed over for a full slot that a look at every ask
                    # would reach after this one (later in fair order) are not refused one now.
                    for other, other_key, place in passed.pop((ask.site_id, ask.request_id), ()) if passed else ():
                        if place > entry[:3]:
                            again.add(other.ask_id)
                            line.push((*self._fair_key(other), other.ask_id, other_key))
                    grants.append(self._grant(ask, start, made_at=now))
                else:
                    if not rank:  # the budgets it found too full (not its site's slots): kept for it
                        wanted.update(b for b, amount in ask.needs.items() if amount >= closed.get(b, math.inf))
                    still_open -= {b for b in ask.needs if self._closed_for_all(b, closed)}
                if ask_id not in again:  # an ask back in line is not its group's next
                    line.following(key, None if start is not None else self._slots_full(ask, key, passed))
        return grants

    def _slots_full(self, ask: Ask, key: Any, passed: dict) -> Callable[[Ask], bool] | None:
        """After `ask` found its site's slots full, its group's later asks refused a slot too need no look (noted
        in `passed`); None: its budgets had no room. Their look would add nothing to `wanted` (interactive first)."""
        slot = self.slots.get(f"slots:{ask.site_id}") if ask.slot_limit is not None else None
        return slot.passing_over(key, passed, self._fair_key) if slot is not None and slot.refuses(ask) else None

    def _closed_for_all(self, budget: str, closed: dict[str, float]) -> bool:
        """A budget closed for the smallest amount waiting on it has room for nobody."""
        return (smallest := self._smallest(budget)) is None or closed.get(budget, math.inf) <= smallest

    def _start_by(self, ask: Ask, now: float, horizon: float, closed: dict[str, float], leave_reserve: bool = False
                  ) -> float | None:
        """The earliest moment from `now` on when every budget of `ask` has room, if by `horizon`.

        `closed` (budget -> smallest amount found not to fit by the horizon)
        spares the rest of a pass those checks: grants only use room up.
        """
        if ask.slot_limit is not None and not self.slot(ask.site_id, ask.slot_limit).fits(now, ask.request_id):
            return None
        start = now
        for budget, amount in ask.needs.items():
            rate = self.rate(budget)
            amount, lag = self.reserve.bulk_room(budget, rate, amount, now) if leave_reserve else (amount, 0.0)
            if amount >= closed.get(budget, math.inf):
                return None
            at = rate.next_room_at(now, amount, lag)
            if at > horizon:
                closed[budget] = min(amount, closed.get(budget, math.inf))
                return None
            start = max(start, at)
        return start

    def _grant(self, ask: Ask, now: float, made_at: float | None = None) -> Grant:
        """Grant `ask` from `now` (its start: a later moment than `made_at` for a grant ahead)."""
        self._unwait(ask)
        grant_id = self._new_grant_id()
        if ask.slot_limit is not None:
            self.slot(ask.site_id, ask.slot_limit).add(now, ask.request_id, ask.worker)
            self.dirty_slots.add(f"slots:{ask.site_id}")
        made_at = now if made_at is None else made_at
        units = self._lease_units(ask, now) if now <= made_at else 0  # never for a grant ahead
        if units:
            return self._grant_lease(ask, grant_id, now, units)
        for budget, amount in ask.needs.items():
            self.rate(budget).add(now, amount, grant_id, ask.ask_id, ask.site_id, parts=len(ask.needs))
            if ask.lane == INTERACTIVE:
                self.reserve.took(budget, now, amount)
            key = (budget, ask.fair_id)
            self.vtime[key] = self.vtime.get(key, 0.0) + amount / max(ask.weight, 1e-6)
        return Grant(ask, grant_id, now, now + self.grace, now + self.late_use_seconds(), made_at=made_at)

    def _new_grant_id(self) -> str:
        return f"{self.instance}{next(self._grant_seq)}"

    def next_wakeup(self, now: float) -> float | None:
        """When something waiting could next be granted (None: nothing to wait for but events).

        An ask fits once all of its budgets have room, and an ask whose budgets
        all have room by the horizon has just been granted (or waits for a slot,
        which only a release frees). So the next chance is `lookahead` before
        the soonest moment a budget that is closed opens for the smallest
        amount waiting on it (that moment itself when only bulk asks wait on it:
        they are not granted ahead): possibly early (a pass that grants nothing), never late.
        """
        soonest = None
        for budget, sites in self._waiting_sites.items():
            smallest = self._smallest(budget) if sites else None
            if smallest is None:
                continue
            if self._interactive.get(budget):
                at = self.rate(budget).next_room_at(now, smallest) - self.lookahead
            else:  # only bulk asks: granted at their room, beside the interactive reserve, which shrinks with time
                rate = self.rate(budget)
                at = rate.next_room_at(now, *self.reserve.bulk_room(budget, rate, smallest, now))
                if (shrinks_at := self.reserve.shrinks_at(budget)) is not None:
                    at = min(at, shrinks_at)
            if at > now and (soonest is None or at < soonest):
                soonest = at
        return soonest

    # --- after the call -----------------------------------------------------
    def settle(self, budget: str, grant_id: str, actual: float, arrived_by: float | None = None) -> None:
        if budget in self.rates:  # counted as learned (limiter/tokens.py), from when it reached the provider
            self.rates[budget].settle_usage(grant_id, actual, arrived_by)

    def release_slot(self, site_id: str, request_id: str) -> None:
        if self.slot(site_id).release(request_id):
            self.dirty_slots.add(f"slots:{site_id}")

    def feedback(
        self,
        now: float,
        budget: str,
        *,
        throttled: bool,
        limit: int | None, remaining: int | None,
        tokens_budget: str | None = None,
        tokens_limit: int | None = None, tokens_remaining: int | None = None, tokens_needed: float | None = None,
        seen_at: float | None = None,
    ) -> bool:
        """What a provider answer said about the key's budget (429, x-ratelimit-*); True: token counting changed.

        A 429 whose figures show requests left and fewer tokens than the call reserved (`tokens_needed`) was
        the tokens': the requests share is not cut (that cost the tier bench a tenth for 3 windows).
        """
        rate = self.rate(budget)
        for_tokens = (bool(tokens_budget) and remaining != 0 and tokens_remaining is not None
                      and tokens_needed is not None and tokens_remaining < tokens_needed)
        if throttled and not for_tokens:
            rate.on_throttled(now)
        rate.on_remaining(now, limit, remaining, seen_at)
        return bool(tokens_budget) and self.rate(tokens_budget).on_provider_tokens(  # a 429 with requests left: tokens
            now, tokens_limit, tokens_remaining, throttled=throttled and remaining != 0, seen_at=seen_at)

    def unused(self, grant_id: str, needs: dict[str, float]) -> None:
        """A grant reached its worker too late and was never sent: give its room back.

        Its place in the pacing schedule too, or pacing would lose that grant
        for good (the schedule, not the window, is what binds in steady state).
        """
        for budget in needs:
            rate = self.rates.get(budget)
            if rate is not None and rate.settle(grant_id, 0.0) and rate.paced:
                rate.tat -= rate.pace_interval()
                rate.dirty.add("meta")

    def late(self, now: float, grant_id: str, needs: dict[str, float], anchor: float) -> list[str]:
        """A permit left for the provider at `anchor`, after its use-by time."""
        return [self.rate(budget).extend(now, grant_id, anchor, amount, parts=len(needs))
                for budget, amount in needs.items()]

    def recover(self, seconds: float) -> None:
        for rate in self.rates.values():
            rate.recover(seconds)

    def saw(self, ask: Ask, now: float, route: str = "") -> None:
        """An ask came from `ask.worker` (at reply address `route`): it is alive, and the slot of the
        request it asks for is its own now."""
        self.workers.saw(ask.worker, now, route)
        slots = self.slots.get(f"slots:{ask.site_id}")
        if slots is not None and slots.own(ask.request_id, ask.worker, later=ask.slot_limit is None):
            self.dirty_slots.add(slots.name)

    def expire(self, now: float) -> dict[str, list[int]]:
        """Grants out of their windows (per-site budgets a slice a call, sweep.py), stale slots, and what gone
        workers held: [slots, waiting asks] each."""
        for name in [n for n in self.rate_specs if ":" not in n] + list(self._sweeps[0].take(self.rates)):
            if (rate := self.rates.get(name)) is not None:
                rate._expire(now)
        gone = self.workers.gone(now)
        released: dict[str, list[int]] = {worker: [0, 0] for worker in gone}
        if gone:  # their waiting asks too: granted, they would hold room nobody sends in
            for ask in [a for a in self.waiting.values() if a.worker in gone]:
                self._unwait(ask)
                released[ask.worker][1] += 1
            self._fresh = [a for a in self._fresh if a.ask_id in self.waiting]
        for name in list(self.slots) if gone else self._sweeps[1].take(self.slots):
            if (slots := self.slots.get(name)) is None:
                continue
            owners = slots.release_owned(gone) if gone else []
            for owner in owners:
                released[owner][0] += 1
            if slots._expire(now) or owners:
                self.dirty_slots.add(slots.name)
        return released

    # --- bounded memory ----------------------------------------------------------
    def prune(self, now: float) -> None:
        """Drop the state of sites and per-site budgets nobody uses any more (about once a second): what stays
        is bounded by what is live. Their table keys are deleted with the next persist.

        - A site's virtual time, once it waits no more on a budget, when at or below the floor of the sites
          still waiting (lifted to it when it comes back anyway) or after `idle_keep` seconds (then it comes
          back as a new site does, at that floor).
        - A per-site budget (Wix) with nothing in its window, nobody waiting, no pressure from the provider
          and no pacing debt: a new one is the same. A site's slot budget with no holder.
        """
        # The sites that stopped waiting, and a slice of the idle ones: not every site's (20,000 keys at 10,000 sites).
        stopped, self._stopped = self._stopped, set()
        for key in stopped.union(self._sweeps[2].take(self._idle_since)):
            budget, site = key
            if key not in self.vtime or self._waiting_sites.get(budget, {}).get(site):
                self._idle_since.pop(key, None)
                continue
            since = self._idle_since.setdefault(key, now)
            # The floor of its own lane: add_ask lifts a site coming back to it (`_floor`).
            floor = self._floor(budget, "|" in site)
            if (floor is not None and self.vtime[key] <= floor) or now - since >= self.idle_keep:
                del self.vtime[key]
                del self._idle_since[key]
        # Per-site budgets and slots a slice a call (sweep.py); those kept only for an unpersisted change: next call.
        again, self._again = self._again, set()
        for name in again.union(n for n in self._sweeps[3].take(self.rates) if ":" in n):
            if (rate := self.rates.get(name)) is None:
                continue
            rate._expire(now)
            if (not rate.entries and name not in self._live and rate.factor >= 1.0
                    and not rate.external and rate.tat <= now - rate.pace_slack()):
                if rate.dirty:
                    self._again.add(name)
                    continue
                del self.rates[name]
                self._dropped.add(f"r|{name}|meta")
        for name in again.union(self._sweeps[4].take(self.slots)):
            if (slots := self.slots.get(name)) is not None and not slots.holders:
                if name in self.dirty_slots:
                    self._again.add(name)
                    continue
                del self.slots[name]
                self._dropped.add(name)

    def sizes(self) -> dict[str, int]:
        """How much the book holds (for tests and debugging)."""
        return {"waiting": len(self.waiting),
                "heap_entries": sum(len(h) for h in self._amounts.values()) + sum(len(h) for h in self._floors.values()),
                "vtimes": len(self.vtime), "idle_sites": len(self._idle_since),
                "budgets_waited_on": len(self._waiting_sites), "rates": len(self.rates), "slots": len(self.slots)}

    # --- persistence (the coordinator's changelog-backed table) -------------
    # Keys: "r|<budget>|meta", "r|<budget>|<bucket>" (grants of one second),
    # "slots:<site>". A value of None deletes the key.
    def take_dirty(self) -> dict[str, Any]:
        """Every table key changed since the last call, with its new value (None: delete it)."""
        out: dict[str, Any] = dict.fromkeys(self._dropped)  # a budget made again since then overwrites it
        self._dropped.clear()
        # Slots first: a pass cut short (coordinator.py) never leaves a grant written without its slot.
        out.update((name, self.slots[name].snapshot()) for name in self.dirty_slots)
        self.dirty_slots.clear()
        changed = list(self._changed)  # the set itself is shared with every rate's DirtyParts: emptied, not replaced
        self._changed.clear()
        self._written_unacked.update(changed)  # see `persisted`
        for name in changed:
            rate = self.rates.get(name)
            if rate is None:  # pruned meanwhile (only a clean rate is: nothing of it to write)
                continue
            for part in rate.dirty:
                if part == "meta":
                    out[f"r|{name}|meta"] = rate.meta()
                else:
                    out[f"r|{name}|{part}"] = rate.bucket(part)
            rate.dirty.clear()
        return out

    def persisted(self) -> None:
        """The writes of the last `take_dirty` are acked (see RateBudget.persisted)."""
        for rate in filter(None, map(self.rates.get, self._written_unacked)):
            rate.persisted()
        self._written_unacked.clear()

    def restore(self, items: Iterable[tuple[str, Any]]) -> None:
        buckets: dict[str, dict[int, list[list[Any]]]] = {}
        for key, state in items:
            if state is None:
                continue
            if key.startswith("slots:"):
                slots = self.slot(key.split(":", 1)[1], state.get("limit"))
                slots.restore(state)
                for owner in slots.owners.values():  # heard afresh from the first message on (WorkerRoll.heard)
                    self.workers.seen.setdefault(owner, -math.inf)
            elif key.startswith("r|"):
                name, part = key[2:].rsplit("|", 1)
                if part == "meta":
                    self.rate(name).restore_meta(state)
                else:
                    buckets.setdefault(name, {})[int(part)] = state
        for name, parts in buckets.items():
            self.rate(name).restore_buckets(parts)

    def granted_asks(self) -> dict[str, dict[str, Any]]:
        """ask_id -> the answer of each grant in a window in every budget it counts in: a takeover answers
        re-asks with these, as usable as the first answers (recovered.py)."""
        return recovered_answers(self.rates.values(), self.grace, self.late_use_seconds())

    # --- figures ------------------------------------------------------------
    def usage(self, name: str, now: float) -> dict[str, float]:
        rate = self.rate(name)
        rate._expire(now)
        return {"limit": rate.limit, "effective_limit": rate.effective_limit(),
                "used_in_window": rate.used_in_last(now, rate.window), "used_in_span": rate.total,
                "waiting": self._live.get(name, 0), "granted_total": rate.granted_total,
                "factor": round(rate.factor, 4), "external": rate.external}

    def used_by_site(self, name: str, now: float) -> dict[str, float]:
        """Each site's units of a budget in the current window (the split of `used_in_window`)."""
        rate = self.rate(name)
        return rate.used_by_site(now, rate.window)
