"""One site's requests in flight across all workers (`SlotBudget`), persisted as one table key.

Written by hand for the same reasons as rates.py: its holders are owned by workers and
released when a worker is gone (workers.py), which no library models.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class SlotBudget:
    """Requests of one site in flight (generate start → publish end), across all workers.

    Each holder's `owner` is the worker that last asked for a permit for its
    request; a gone owner's holders are released (`release_owned`, workers.py),
    but only while the request is at its first stage: taken up again there, it
    asks for a slot again (the generate ask carries the slot limit). One a later
    stage has asked for (`later`) goes on without asking for a slot when taken
    up again, so releasing it would let the site run over its cap: it keeps the
    slot until its outcome (or the lease below).
    """

    name: str
    limit: int
    holders: dict[str, float] = field(default_factory=dict)  # request_id -> since
    owners: dict[str, str] = field(default_factory=dict)  # request_id -> worker ("" or absent: unknown)
    later: set[str] = field(default_factory=set)  # requests a later stage (no slot limit) has asked for
    lease_seconds: float = 3600.0  # reclaim slots of requests that vanished, whoever held them

    def _expire(self, now: float) -> bool:
        stale = [r for r, t in self.holders.items() if now - t > self.lease_seconds]
        for rid in stale:
            self.release(rid)
        return bool(stale)

    def fits(self, now: float, request_id: str) -> bool:
        return request_id in self.holders or len(self.holders) < self.limit

    def refuses(self, ask: Any) -> bool:
        """Whether an ask for a slot at this limit is refused one (a pass only adds holders: until its end,
        or until its own request gets a slot through another of its asks)."""
        return ask.slot_limit == self.limit and not self.fits(0.0, ask.request_id)

    def passing_over(self, group: Any, passed: dict, place: Callable[[Any], tuple]) -> Callable[[Any], bool]:
        """What a scheduling pass may pass over in `group` (the asks this slot refuses), each noted in
        `passed` by (site, request) with its `place` in the fair order then (where a look at every ask
        would look at it): it is looked at again if its request gets a slot before that place."""
        def passed_over(ask: Any) -> bool:
            if not self.refuses(ask):
                return False
            passed.setdefault((ask.site_id, ask.request_id), []).append((ask, group, place(ask)))
            return True
        return passed_over

    def add(self, now: float, request_id: str, owner: str = "") -> None:
        self.holders.setdefault(request_id, now)
        self.own(request_id, owner)

    def own(self, request_id: str, owner: str, later: bool = False) -> bool:
        """`owner` asked for `request_id`'s next permit (at a later stage: `later`): it holds the slot
        now (True if that changed)."""
        if request_id not in self.holders:
            return False
        changed = later and request_id not in self.later
        if changed:
            self.later.add(request_id)
        if owner and self.owners.get(request_id) != owner:
            self.owners[request_id] = owner
            changed = True
        return changed

    def release(self, request_id: str) -> bool:
        self.owners.pop(request_id, None)
        self.later.discard(request_id)
        return self.holders.pop(request_id, None) is not None

    def release_owned(self, gone: set[str]) -> list[str]:
        """Release the holders of workers that are gone, at their first stage; the owner of each released."""
        released = [(rid, owner) for rid, owner in self.owners.items() if owner in gone and rid not in self.later]
        for rid, _ in released:
            self.release(rid)
        return [owner for _, owner in released]

    def snapshot(self) -> dict[str, Any]:
        return {"holders": dict(self.holders), "limit": self.limit, "owners": dict(self.owners),
                "later": sorted(self.later)}

    def restore(self, state: dict[str, Any]) -> None:
        self.holders = {k: float(v) for k, v in state.get("holders", {}).items()}
        self.owners = {k: str(v) for k, v in (state.get("owners") or {}).items() if k in self.holders and v}
        self.later = {k for k in state.get("later") or () if k in self.holders}
