"""Lanes in the limiter's fair line: interactive asks first, bulk gets what they leave, fair within each lane."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.limiter.book import BULK, INTERACTIVE, Ask, BudgetBook
from tests.limiter.test_book import REQ, TOK, book, drain, max_in_window

properties = settings(database=None, deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

_seq = 0


def ask(site: str, lane: str, needs: dict | None = None, *, weight: float = 1.0, slot_limit: int | None = None) -> Ask:
    global _seq
    _seq += 1
    return Ask(f"l{_seq}", site, f"r{_seq}", needs or {REQ: 1}, slot_limit, weight, 0.0, 0, lane=lane)


def test_interactive_asks_go_before_bulk_asks_that_came_first():
    b = book(limit=10, window=10.0, grace=0.0, paced=False)
    for _ in range(10):
        b.add_ask(ask("backfill", BULK))
    for _ in range(5):
        b.add_ask(ask("shop", INTERACTIVE))
    grants = b.grant_ready(0.0)
    # Bulk leaves the interactive reserve free (what interactive took this last second, at most a tenth) ...
    assert [g.ask.lane for g in grants] == [INTERACTIVE] * 5 + [BULK] * 4
    assert b.grant_ready(0.5) == []
    assert [g.ask.lane for g in b.grant_ready(1.0)] == [BULK]  # ... and takes it once the reserve is empty


def test_bulk_gets_what_interactive_leaves_and_nothing_is_left_idle():
    b = book(limit=20, window=10.0, grace=0.0, paced=False)
    for _ in range(200):
        b.add_ask(ask("backfill", BULK))
    for _ in range(5):
        b.add_ask(ask("shop", INTERACTIVE))
    grants = drain(b, 0.0, 30.0)
    first_window = [g for g in grants if g.granted_at < 10.0]
    assert len(first_window) == 20  # work-conserving: the 15 units interactive left went to bulk
    assert sum(g.ask.lane == INTERACTIVE for g in first_window) == 5


def test_a_big_interactive_ask_is_not_starved_by_small_bulk_asks():
    b = book(limit=1000, window=10.0, grace=0.0, tpm=1000, paced=False)
    b.rate(TOK).add(0.0, 600, "earlier")  # 400 tokens of room now, all of it back at t=10
    b.add_ask(ask("shop", INTERACTIVE, {REQ: 1, TOK: 900}))
    for _ in range(50):
        b.add_ask(ask("backfill", BULK, {REQ: 1, TOK: 100}))
    assert b.grant_ready(1.0) == []  # the room is kept for the interactive ask, not nibbled away
    grants = b.grant_ready(10.0)
    assert [g.ask.lane for g in grants] == [INTERACTIVE]  # what it left (100) is the interactive reserve now
    grants = b.grant_ready(11.0)
    assert all(g.ask.lane == BULK for g in grants)  # a second later it goes to bulk
    assert sum(g.ask.needs[TOK] for g in grants) == 100


def test_an_interactive_ask_held_by_its_sites_slots_does_not_hold_bulk_back():
    b = book(limit=100, window=10.0, grace=0.0, paced=False, slots=1)
    b.add_ask(ask("shop", INTERACTIVE, slot_limit=1))
    assert len(b.grant_ready(0.0)) == 1
    b.add_ask(ask("shop", INTERACTIVE, slot_limit=1))  # waits for the shop's one slot
    b.add_ask(ask("backfill", BULK))
    assert [g.ask.site_id for g in b.grant_ready(0.5)] == ["backfill"]


def paced_book(limit: int = 60, window: float = 10.0, lookahead: float = 1.0) -> BudgetBook:
    b = BudgetBook({REQ: {"limit": limit, "window": window, "paced": True}}, grace=0.3, lookahead=lookahead)
    b.instance = "t-"
    return b


def test_bulk_is_never_granted_ahead_so_an_interactive_ask_gets_the_next_room():
    b = paced_book()  # one unit every ~1/6 s, granted up to 1 s ahead
    for _ in range(200):
        b.add_ask(ask("backfill", BULK))
    grants = drain(b, 0.0, 5.0)
    assert grants and all(g.granted_at <= g.made_at + 1e-9 for g in grants)  # none ahead
    live = ask("shop", INTERACTIVE)
    b.add_ask(live)
    (first, *_) = drain(b, 5.0, 6.5)
    pace = b.rate(REQ).pace_interval()
    assert first.ask is live and first.granted_at - 5.0 <= pace + 1e-6  # the next room, not a second later


def test_interactive_asks_arriving_while_bulk_fills_a_paced_budget_are_granted_at_once():
    b = paced_book(limit=60, window=10.0)  # one unit every 1/6 s
    for _ in range(400):
        b.add_ask(ask("backfill", BULK))
    grants, now, waits = drain(b, 0.0, 20.0), 20.0, []
    for _ in range(20):  # an interactive ask every half second, into a budget bulk work keeps full
        live = ask("shop", INTERACTIVE)
        b.add_ask(live)
        more = drain(b, now, now + 0.5)
        grants += more
        waits.append(next(g.granted_at for g in more if g.ask is live) - now)
        now += 0.5
    pace = b.rate(REQ).pace_interval()
    assert max(waits[:2]) <= pace + 1e-6  # the first ones wait for the next unit at most, while the reserve forms
    assert max(waits[2:]) <= 1e-6  # then they find the room bulk left them
    bulk = [g for g in grants if g.ask.lane == BULK and g.granted_at >= 20.0]
    assert len(bulk) + 20 >= 10.0 / pace - 3  # bulk still had the rest of the budget
    assert max_in_window([g.granted_at for g in grants], 10.0) <= 60


def test_bulk_alone_still_uses_the_whole_budget():
    b = paced_book(limit=60, window=10.0)
    for _ in range(400):
        b.add_ask(ask("backfill", BULK))
    grants = drain(b, 0.0, 40.0)
    assert len(grants) >= 40 / b.rate(REQ).pace_interval() - 2  # the paced rate: nothing lost to not granting ahead
    assert max_in_window([g.granted_at for g in grants], 10.0) <= 60


def test_fair_between_sites_within_the_bulk_lane():
    b = book(limit=30, window=10.0, grace=0.0, paced=False)
    for _ in range(300):
        b.add_ask(ask("big-backfill", BULK, weight=2.0))
        b.add_ask(ask("small-backfill", BULK))
    grants = drain(b, 0.0, 60.0)
    big = sum(g.ask.site_id == "big-backfill" for g in grants)
    small = sum(g.ask.site_id == "small-backfill" for g in grants)
    assert big / small == pytest.approx(2.0, rel=0.1)


def test_a_sites_bulk_work_does_not_lower_its_interactive_share():
    b = book(limit=10, window=10.0, grace=0.0, paced=False)
    for _ in range(40):
        b.add_ask(ask("shop", BULK))
    drain(b, 0.0, 35.0)  # "shop" had 40 bulk grants, nobody else competed
    for _ in range(20):
        b.add_ask(ask("shop", INTERACTIVE))
        b.add_ask(ask("other", INTERACTIVE))
    sites = [g.ask.site_id for g in b.grant_ready(50.0)]
    assert sites.count("shop") == sites.count("other") == 5


@properties
@given(
    asks=st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([INTERACTIVE, BULK]),
                            st.integers(1, 400)), min_size=1, max_size=60),
    room=st.integers(0, 2000),
)
def test_no_bulk_ask_is_granted_while_an_interactive_one_waits_and_nothing_that_fits_waits(asks, room):
    b = book(limit=10**6, window=10.0, grace=0.0, tpm=2000, paced=False)
    if room < 2000:
        b.rate(TOK).add(0.0, 2000 - room, "earlier")
    for site, lane, tokens in asks:
        b.add_ask(ask(site, lane, {REQ: 1, TOK: tokens}))
    grants = b.grant_ready(1.0)
    free = room - sum(g.ask.needs[TOK] for g in grants)
    waiting = list(b.waiting.values())
    assert free >= 0
    # interactive first, and work-conserving within it: no waiting interactive ask fits what is left
    assert all(a.needs[TOK] > free for a in waiting if a.lane == INTERACTIVE)
    if any(a.lane == INTERACTIVE for a in waiting):  # its room is kept: bulk took none of the tokens
        assert [g for g in grants if g.ask.lane == BULK] == []
    else:  # bulk gets what interactive left but the reserve: no waiting ask fits what is left beside it
        reserve = min(sum(g.ask.needs[TOK] for g in grants if g.ask.lane == INTERACTIVE), 0.1 * 2000)
        assert all(min(a.needs[TOK] + reserve, max(a.needs[TOK], 2000)) > free for a in waiting)


@properties
@given(seed=st.integers(0, 10_000))
def test_interactive_share_of_a_contested_budget_is_all_it_asks_for(seed):
    """With interactive work arriving at less than the budget, every interactive ask is granted in the
    window it arrives in, whatever the bulk backlog; bulk takes the rest."""
    rng = random.Random(seed)
    b = book(limit=20, window=10.0, grace=0.0, paced=False)
    for _ in range(500):
        b.add_ask(ask(f"bulk-{rng.randrange(5)}", BULK))
    now, waits, bulk_granted = 0.0, [], 0
    arrived: dict[str, float] = {}
    for step in range(60):
        now = step * 1.0
        if rng.random() < 0.8:
            a = ask(f"shop-{rng.randrange(10)}", INTERACTIVE)
            arrived[a.ask_id] = now
            b.add_ask(a)
        for g in b.grant_ready(now):
            if g.ask.lane == INTERACTIVE:
                waits.append(g.granted_at - arrived[g.ask.ask_id])
            else:
                bulk_granted += 1
    assert max(waits) < 10.0  # never more than a window behind, whatever bulk waits
    assert bulk_granted > 0  # and the budget interactive left did not go idle
