"""A re-ask answered by the next owner of the limiter, from the table it recovered (coordinator.load).

A grant made durable whose answer never reached its worker (the coordinator died after its writes were
acked, before or while answering) is answered at the worker's re-ask by the next owner, from the grant's
window entries. That answer must be as usable as the first: for a lease, the same units, start and end
(its entry sits at the lease's end, so read as one permit it started there, up to 30 s later for a site's
Wix lease, and its other units were never taken nor given back); for every grant, the same last use.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from streams.limiter import coordinator as coordinator_module
from streams.limiter.coordinator import Coordinator

pytestmark = pytest.mark.asyncio

REPLY = {"Faust-Ag-ReplyTo": b"reply-w1", "Faust-Ag-CorrelationId": b"c1"}
SITE_LEASE = {"op": "acquire", "ask_id": "L", "site_id": "s", "request_id": "r", "needs": {"wix_requests:s": 1},
              "lease": 3, "lane": "interactive", "worker": "w1"}
REFILL = {"op": "lease", "ask_id": "R", "site_id": "s", "request_id": "", "needs": {"replicate_requests": 1},
          "lease": 3, "worker": "w1"}
GENERATE = {"op": "acquire", "ask_id": "G", "site_id": "s", "request_id": "r", "needs": {"openai_requests": 1,
            "openai_tokens": 900}, "slot_limit": 5, "lane": "interactive", "worker": "w1"}
KEPT = ("grant_id", "granted_at", "use_by", "last_use", "lease_units", "lease_until")


def _coordinator(monkeypatch, table: dict, sent: list[dict]) -> Coordinator:
    """A coordinator whose writes land in `table` at once (acked) and whose answers go to `sent`."""
    c = Coordinator()
    c.active = True

    async def persist(writes):
        table.update(writes)

    async def send(reply, value):
        sent.append(dict(value))

    monkeypatch.setattr(c, "_persist", persist)
    monkeypatch.setattr(c, "_send", send)
    return c


@pytest.fixture
def owners(monkeypatch):
    table: dict = {}

    async def table_items():
        return [(k, v) for k, v in table.items() if v is not None]

    async def changelog_end_offset():
        return len(table)

    monkeypatch.setattr(coordinator_module, "_table_items", table_items)
    monkeypatch.setattr(coordinator_module, "_changelog_end_offset", changelog_end_offset)
    monkeypatch.setattr(coordinator_module, "_start_nudge", lambda c, epoch: None)
    first_sent: list[dict] = []
    next_sent: list[dict] = []
    return _coordinator(monkeypatch, table, first_sent), first_sent, _coordinator(monkeypatch, table, next_sent), next_sent


@pytest.mark.parametrize("ask", [SITE_LEASE, REFILL, GENERATE], ids=["site lease", "lease refill", "one permit"])
async def test_the_next_owner_answers_a_re_ask_with_the_grant_as_it_was_made(owners, ask):
    first, first_sent, following, following_sent = owners
    first.activate()
    await first.load(None)
    await first.handle(ask, REPLY, 10)
    first.handled_to = 10
    await first.run_once()  # granted, written and acked, answered: the answer is lost on its way
    (original,) = first_sent
    assert ("lease_units" in original) == (ask is not GENERATE)  # the book leases here as in production
    first.deactivate()  # the coordinator's worker dies; the next one recovers the table
    following.activate()
    await following.load(11)
    await following.handle(ask, REPLY, 11)  # the worker's re-ask after the rebalance
    (again,) = following_sent
    assert {k: again.get(k) for k in KEPT} == {k: original.get(k) for k in KEPT}
    assert {k: float(v) for k, v in again["needs"].items()} == {k: float(v) for k, v in ask["needs"].items()}


async def test_a_site_lease_answered_by_the_next_owner_is_taken_at_once_and_its_other_units_go_back(owners,
                                                                                                   monkeypatch):
    """The worker side of the first test: the recovered answer of a site's 30 s Wix lease, as acquire reads it."""
    import streams.limiter.client as limiter

    first, first_sent, following, following_sent = owners
    first.activate()
    await first.load(None)
    await first.handle(SITE_LEASE, REPLY, 10)
    await first.run_once()
    first.deactivate()
    following.activate()
    await following.load(11)
    await following.handle(SITE_LEASE, REPLY, 11)
    (recovered,) = following_sent
    casts: list[dict] = []

    async def cast(value):
        casts.append(value)

    async def answered(value, deadline=None):
        return recovered

    monkeypatch.setattr(limiter, "_cast", cast)
    budgets = limiter.Budgets()
    monkeypatch.setattr(budgets, "_ask_until_answered", answered)
    monkeypatch.setattr(budgets, "_maybe_refill", lambda *args: None)
    asked = time.time()
    # Read as one permit, it started at the lease's end: acquire slept 30 s before its one request.
    permit = await asyncio.wait_for(
        budgets.acquire(site_id="s", request_id="r", needs={"wix_requests:s": 1.0}), timeout=5.0)
    assert permit.granted_at - asked < 1.0
    (lease,) = budgets._pools["wix_requests:s"].leases
    assert (lease.grant_id, lease.left, lease.taken) == (recovered["grant_id"], 2, 1)
    budgets._end_lease("wix_requests:s", budgets._pools["wix_requests:s"], lease)  # its end (or a 429)
    for _ in range(1000):
        if casts:
            break
        await asyncio.sleep(0)
    assert casts == [{"op": "lease_end", "budget": "wix_requests:s", "grant_id": recovered["grant_id"], "taken": 1}]
