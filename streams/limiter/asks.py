"""What the coordinator's book works with: an ask for permits, and the grant that answers it.

Lanes: an ask carries its request's lane; interactive asks go before bulk ones (book.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BULK", "INTERACTIVE", "LANE_RANK", "Ask", "Grant"]

INTERACTIVE, BULK = "interactive", "bulk"
LANE_RANK = {INTERACTIVE: 0, BULK: 1}  # lower goes first


@dataclass
class Ask:
    ask_id: str
    site_id: str
    request_id: str
    needs: dict[str, float]  # rate budget name -> amount (none: an ask for one of its site's slots alone)
    slot_limit: int | None  # when set, the request also needs one of its site's slots
    weight: float
    arrived_at: float
    seq: int
    reply: Any = None  # how to answer (set by the Kafka glue)
    waited: bool = False  # a pass found no room for it: its grant came when room appeared
    lease: int = 0  # units it would take as a lease (0: one permit); see BudgetBook.lease
    lane: str = INTERACTIVE  # or BULK: served only with what interactive asks leave
    worker: str = ""  # the asking worker process (workers.py): its request's slot is its to hold now

    @property
    def primary(self) -> str:
        return next(iter(self.needs), "")

    @property
    def fair_id(self) -> str:
        """Who the fair share is counted for: the site, apart in each lane ("|" is in no site id)."""
        return self.site_id if self.lane == INTERACTIVE else f"{self.site_id}|{self.lane}"


@dataclass
class Grant:
    ask: Ask
    grant_id: str
    granted_at: float  # the permit's start: not sent before, counted from then
    use_by: float  # send by then and the permit counts exactly as granted
    last_use: float  # send by then and report it (a late send): counted until it left every window
    made_at: float = 0.0  # when the coordinator decided (before granted_at for a grant ahead)
    lease_units: int = 0  # a lease: this many units, to be taken by lease_until (0: one permit)
    lease_until: float = 0.0

    def as_reply(self) -> dict[str, Any]:
        lease = {"lease_units": self.lease_units, "lease_until": self.lease_until} if self.lease_units else {}
        return {**lease, "ask_id": self.ask.ask_id, "grant_id": self.grant_id, "granted_at": self.granted_at,
                "use_by": self.use_by, "last_use": self.last_use, "needs": self.ask.needs,
                "queued": max(0.0, self.granted_at - self.ask.arrived_at), "arrived_at": self.ask.arrived_at,
                "ahead": self.granted_at > self.made_at, "waited": self.ask.waited}
