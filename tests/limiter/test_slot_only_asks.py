"""Asks for a site's in-flight slot alone (no rate budget): a request whose paid call is done already.

streams/pipeline/generate.py sends one for a request whose article is in the effect ledger, so it keeps to
its site's cap like a request whose article is written now. Without a budget waiting, the pass used to end
at once: such an ask was never granted.
"""
from __future__ import annotations

from streams.limiter.book import BULK, Ask

from .test_book import REQ, ask, book


def slot_only(site: str, request_id: str, limit: int, ask_id: str, lane: str = "interactive") -> Ask:
    return Ask(ask_id, site, request_id, {}, limit, 1.0, 0.0, 0, lane=lane, worker="w-a")


def granted(b, now: float = 0.0) -> list[str]:
    return [g.ask.ask_id for g in b.grant_ready(now)]


def test_a_slot_alone_is_granted_while_the_site_has_one_and_waits_for_a_release_otherwise():
    b = book(slots=20)
    b.add_ask(slot_only("s", "r1", 1, "a1"))
    b.add_ask(slot_only("s", "r2", 1, "a2"))
    b.add_ask(slot_only("t", "r3", 1, "a3", lane=BULK))  # another site's: its own slots
    assert sorted(granted(b)) == ["a1", "a3"]
    assert set(b.slot("s").holders) == {"r1"} and granted(b, 1.0) == []
    assert b.next_wakeup(1.0) is None  # only a release frees a slot: the coordinator wakes at its message
    b.release_slot("s", "r1")
    assert granted(b, 2.0) == ["a2"] and set(b.slot("s").holders) == {"r2"}
    assert not b.waiting and b.rates == {}  # no budget counted anything


def test_a_holder_asking_again_is_granted_at_once_and_holds_one_slot():
    b = book()
    b.add_ask(slot_only("s", "r1", 1, "a1"))
    b.add_ask(slot_only("s", "r1", 1, "a2"))  # the same run asks again (a replay, a takeover's re-ask)
    assert sorted(granted(b)) == ["a1", "a2"] and set(b.slot("s").holders) == {"r1"}


def test_a_slot_alone_and_a_generate_ask_share_the_sites_cap():
    b = book(limit=1000)
    b.add_ask(ask("s", {REQ: 1}, ask_id="g1", request_id="r1", slot_limit=1))
    b.add_ask(slot_only("s", "r2", 1, "a2"))
    assert len(granted(b)) == 1 and len(b.slot("s").holders) == 1 and len(b.waiting) == 1
    (holder,) = b.slot("s").holders
    b.release_slot("s", holder)
    assert len(granted(b, 1.0)) == 1 and not b.waiting and len(b.slot("s").holders) == 1


def test_a_slot_alone_is_granted_beside_budgets_that_are_full():
    b = book(limit=1, window=10.0, paced=False)
    b.add_ask(ask("t", {REQ: 1}, ask_id="g1"))
    assert granted(b) == ["g1"]
    b.add_ask(ask("t", {REQ: 1}, ask_id="g2"))  # the requests budget is full for 10 s
    b.add_ask(slot_only("s", "r1", 2, "a1"))
    assert granted(b, 1.0) == ["a1"] and list(b.waiting) == ["g2"]
