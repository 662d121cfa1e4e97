"""The answers of the grants a recovered book holds: what a takeover answers a re-ask with (coordinator.load).

A grant whose writes were acked but whose answer never reached its worker (the coordinator died in
between, or the answer was lost) is answered again by the next owner when the worker asks again, from
its window entries alone ([time, amount, grant_id, ask_id, site_id, lease_start, reserved, used, parts],
rates.py). That answer must be usable as the first one was (asks.Grant.as_reply):

- a lease's entry sits at its end (`lease_start` says when it began): answered as one permit starting
  there, the worker waited until the lease's end (30 s for a site's Wix lease) to send one request, and
  never gave back the units it did not know it held; they stayed counted a window after the lease;
- every permit's `last_use` (start + the book's late use): without it, an answer that reaches a busy
  worker after `use_by` was thrown away (room given back, asked again) instead of being used late.
"""
from __future__ import annotations

from typing import Any, Iterable

from streams.limiter.rates import RateBudget


def recovered_answers(rates: Iterable[RateBudget], grace: float, late_use: float) -> dict[str, dict[str, Any]]:
    """ask_id -> the answer of each grant found in every budget it counts in (`parts`).

    A coordinator killed mid-pass may leave a grant in some only: counted there, never answered (its
    re-ask gets a new grant), or it would use room the others lack. `grace` and `late_use` are the
    book's (BudgetBook.grace, BudgetBook.late_use_seconds)."""
    found: dict[str, dict[str, Any]] = {}
    for rate in rates:
        for at, _, grant_id, ask_id, _site, lease_start, reserved, _used, parts in rate.entries:
            grant = found.setdefault(grant_id, {"ask_id": ask_id, "parts": parts, "needs": {}, "at": at,
                                                "lease_start": lease_start})
            grant["needs"][rate.name] = reserved
            grant["at"] = min(grant["at"], at)  # an entry a report of its send moved: the others are at its grant
    out: dict[str, dict[str, Any]] = {}
    for grant_id, grant in found.items():
        if not grant["ask_id"] or len(grant["needs"]) < grant["parts"]:
            continue
        if grant["lease_start"] is not None:  # a lease: its entry is at its end, its units may go out from its start
            until = grant["at"]
            answer = {"granted_at": grant["lease_start"], "lease_until": until, "use_by": until + grace,
                      "last_use": until + late_use, "lease_units": int(sum(grant["needs"].values()))}
            grant["needs"] = dict.fromkeys(grant["needs"], 1.0)  # what its ask needed: one unit at a time
        else:
            start = grant["at"]
            answer = {"granted_at": start, "use_by": start + grace, "last_use": start + late_use}
        out[grant["ask_id"]] = {"grant_id": grant_id, **answer, "needs": grant["needs"], "queued": 0.0}
    return out
