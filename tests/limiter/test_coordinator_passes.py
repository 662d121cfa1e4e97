"""streams/limiter/coordinator.py run_once and load: what a pass answers is what its writes hold, and a takeover
reads on from where the last owner's writes end (coordinator.READ_KEY)."""
from __future__ import annotations

import time

import pytest

from streams.limiter import coordinator as coordinator_module
from streams.limiter.coordinator import MARKER_KEY, READ_KEY, Coordinator

pytestmark = pytest.mark.asyncio


class FakeLease:
    lease_units = 3

    def as_reply(self) -> dict:
        return {"grant_id": "L1", "lease_units": 3}


def _leasing_coordinator(monkeypatch) -> Coordinator:
    """A loaded coordinator whose book grants every lease ask at once (FakeLease)."""
    c = Coordinator()
    c.active = c.loaded = True
    c.last_tick = time.time()
    monkeypatch.setattr(c.book, "lease", lambda ask, now: FakeLease())
    return c


async def test_a_lease_granted_while_a_pass_writes_is_answered_only_after_a_later_pass_wrote(monkeypatch):
    c = _leasing_coordinator(monkeypatch)
    sent: list[str] = []
    persisted: list[dict] = []

    async def send(reply, value):
        sent.append(value["grant_id"])

    async def persist(writes):
        persisted.append(dict(writes))
        if len(persisted) == 1:  # the own reader handles records while a pass waits for its acks
            await c.handle({"op": "lease", "ask_id": "L", "site_id": "s", "needs": {"replicate_requests": 1},
                            "lane": "interactive"}, {"Faust-Ag-ReplyTo": b"r", "Faust-Ag-CorrelationId": b"c"}, 5)
            c.handled_to = 5

    monkeypatch.setattr(c, "_send", send)
    monkeypatch.setattr(c, "_persist", persist)
    c.handled_to = 4
    await c.run_once()
    assert persisted[0][READ_KEY] == {"offset": 4} and sent == []  # not in these writes: not answered yet
    await c.run_once()
    assert persisted[1][READ_KEY] == {"offset": 5} and sent == ["L1"]
    assert all(list(writes)[-1] == READ_KEY for writes in persisted)  # last: all before it landed first
    await c.run_once()
    assert len(persisted) == 2  # nothing new handled, nothing written again


async def test_a_failed_pass_keeps_its_answers_for_the_next(monkeypatch):
    c = _leasing_coordinator(monkeypatch)
    sent: list[str] = []
    fail = [True]

    async def send(reply, value):
        sent.append(value["grant_id"])

    async def persist(writes):
        if fail.pop(0) if fail else False:
            raise ConnectionError("broker away")

    monkeypatch.setattr(c, "_send", send)
    monkeypatch.setattr(c, "_persist", persist)
    await c.handle({"op": "lease", "ask_id": "L", "site_id": "s", "needs": {"replicate_requests": 1},
                    "lane": "interactive"}, {"Faust-Ag-ReplyTo": b"r", "Faust-Ag-CorrelationId": b"c"}, 5)
    c.handled_to = 5
    with pytest.raises(ConnectionError):
        await c.run_once()
    assert sent == []
    await c.run_once()
    assert sent == ["L1"]


async def test_a_takeover_reads_on_from_where_the_last_owners_writes_end(monkeypatch):
    async def items():
        return [(READ_KEY, {"offset": 41}), (MARKER_KEY, {"instance": "old-", "at": 1.0, "previous": None})]

    monkeypatch.setattr(coordinator_module, "_table_items", items)
    c = Coordinator()
    c.active = True
    c.pending_writes = {"slots:s": {"stale": True}}  # left by a pass that failed after an earlier takeover
    await c.load(None)
    assert c.loaded and c.resume_from == 42 and c.handled_to is None
    assert "slots:s" not in c.pending_writes and MARKER_KEY in c.pending_writes

    async def nothing():
        return []

    monkeypatch.setattr(coordinator_module, "_table_items", nothing)
    fresh = Coordinator()
    fresh.active = True
    await fresh.load(None)
    assert fresh.resume_from is None  # no record of where writes end: the agent's first offset is used
