"""Unit tests of streams.limiter.book: the limiter's arithmetic, without Kafka.

The central property is checked the way the provider simulators check it: take
the times requests *arrive* at the provider (grant time + a delay of at most
the grace, or a late delay reported back to the book) and count them in every
sliding window of length W; no window may hold more than the limit.
"""
from __future__ import annotations

import random
import time
from bisect import bisect_right

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.rates import BUCKET_SECONDS, RateBudget, bucket_of
from streams.limiter.slots import SlotBudget

REQ = "openai_requests"
TOK = "openai_tokens"


def book(limit: int = 60, window: float = 10.0, grace: float = 0.3, paced: bool = True, tpm: int = 10**9,
         slots: int = 20) -> BudgetBook:
    specs = {
        REQ: {"limit": limit, "window": window, "paced": paced},
        TOK: {"limit": tpm, "window": window},
        "wix_requests:": {"limit": limit, "window": window, "paced": paced},
    }
    b = BudgetBook(specs, grace=grace, slot_default=slots)
    b.instance = "t-"
    return b


_seq = 0


def ask(site: str = "s", needs: dict | None = None, *, ask_id: str | None = None, request_id: str | None = None,
        slot_limit: int | None = None, weight: float = 1.0, now: float = 0.0) -> Ask:
    global _seq
    _seq += 1
    return Ask(ask_id or f"a{_seq}", site, request_id or f"r{_seq}", needs or {REQ: 1}, slot_limit, weight, now, 0)


def max_in_window(times: list[float], window: float) -> int:
    """The simulators' rule: a request at t counts in (t - W, t]."""
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def drain(b: BudgetBook, start: float, until: float, jitter: float = 0.0, rng: random.Random | None = None,
          on_grant=None) -> list:
    """Run the scheduler as the coordinator does: a pass, then sleep until next_wakeup (plus jitter)."""
    rng = rng or random.Random(1)
    now = start
    grants = []
    while now < until:
        for g in b.grant_ready(now):
            grants.append(g)
            if on_grant:
                on_grant(g, now)
        wake = b.next_wakeup(now)
        if wake is None:
            if not b.waiting:
                break
            wake = now + 0.05  # the coordinator also passes on every event (an unused grant, a release)
        now = max(now + 0.001, min(wake, now + 1.0)) + rng.uniform(0, jitter)
    return grants


# --------------------------------------------------------------------------- the window


def test_rate_budget_counts_a_grant_for_window_plus_grace():
    r = RateBudget(REQ, 2, 10.0, 0.5)
    r.add(100.0, 1, "g1")
    r.add(100.0, 1, "g2")
    assert not r.fits(110.0, 1)  # still counted at t + W
    assert not r.fits(110.49, 1)
    assert r.fits(110.5, 1)  # gone at t + W + grace
    assert r.used(110.5) == 0


def test_an_ask_larger_than_the_whole_budget_goes_alone_on_an_empty_window():
    r = RateBudget(TOK, 1000, 10.0, 0.5)
    assert r.fits(0.0, 5000)
    r.add(0.0, 5000, "big")
    assert not r.fits(1.0, 1)
    assert r.next_room_at(1.0, 5000) == pytest.approx(10.5)


def test_settle_replaces_the_reservation_and_unknown_grants_are_ignored():
    r = RateBudget(TOK, 1000, 10.0, 0.5)
    r.add(0.0, 800, "g1")
    assert not r.fits(1.0, 300)
    assert r.settle("g1", 500)
    assert r.used(1.0) == 500
    assert r.fits(1.0, 300)
    assert not r.settle("nope", 1)
    assert r.settle("g1", -5) and r.used(1.0) == 0  # never below zero


@pytest.mark.parametrize("seed", range(5))
def test_no_provider_window_ever_exceeds_the_limit_when_sends_are_within_grace(seed):
    rng = random.Random(seed)
    limit, window, grace = 40, 10.0, 0.3
    b = book(limit, window, grace, paced=bool(seed % 2))
    for i in range(600):
        b.add_ask(ask(f"site{i % 7}", {REQ: 1}))
    arrivals = []
    drain(b, 0.0, 200.0, jitter=0.02, rng=rng,
          on_grant=lambda g, now: arrivals.append(now + rng.uniform(0, grace)))
    assert len(arrivals) > 300
    assert max_in_window(arrivals, window) <= limit


def test_a_late_send_reported_before_its_room_is_reused_keeps_every_window_within_the_limit():
    rng = random.Random(7)
    limit, window, grace = 30, 10.0, 0.3
    b = book(limit, window, grace)
    for i in range(400):
        b.add_ask(ask("s", {REQ: 1}))
    arrivals = []
    late = 0

    def send(g, now):
        nonlocal late
        delay = rng.uniform(0, grace) if rng.random() > 0.1 else rng.uniform(grace, 3.0)  # 10 % much too late
        arrivals.append(now + delay)
        if delay > grace:  # the worker's wire hook reports it at once
            late += 1
            assert b.late(now, g.grant_id, g.ask.needs, now + delay) == ["extended"]

    drain(b, 0.0, 120.0, rng=rng, on_grant=send)
    assert late > 10
    assert max_in_window(arrivals, window) <= limit


def test_a_late_report_after_the_entry_expired_revives_it():
    r = RateBudget(REQ, 5, 10.0, 0.3)
    r.add(0.0, 1, "g1", "a1")
    assert r.used(11.0) == 0
    assert r.extend(11.0, "g1", anchor=10.5, amount=1) == "revived"  # the provider counts it until 20.5
    assert r.used(11.0) == 1 and r.used(20.49) == 1 and r.used(20.5) == 0
    assert r.extend(31.0, "g2", anchor=10.0, amount=1) == "ok"  # long gone from every window


def test_extend_keeps_entries_in_time_order():
    r = RateBudget(REQ, 10, 10.0, 0.3)
    for i in range(5):
        r.add(float(i), 1, f"g{i}")
    assert r.extend(5.0, "g0", anchor=4.6, amount=1) == "extended"
    times = [e[0] for e in r.entries]
    assert times == sorted(times) and r.index["g0"][0] == pytest.approx(4.3)
    assert r.extend(5.0, "g1", anchor=1.1, amount=1) == "ok"  # sent within grace: nothing to do


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["settle", "late"]), st.integers(0, 39), st.integers(-20, 40)),
                max_size=60))
def test_entries_stay_in_time_order_and_whole_whatever_moves_them(moves):
    """Settles and late reports move entries (found by a binary search over their time; many share one)."""
    r = RateBudget(REQ, 1_000, 10.0, 0.3)
    for i in range(40):
        r.add(float(i // 8), 1, f"g{i}")  # passes grant several at the same moment
    for kind, i, tenths in moves:
        at = i // 8 + tenths / 10
        if kind == "settle":
            r.settle_usage(f"g{i}", 1, arrived_by=at)
        else:
            r.extend(5.0, f"g{i}", anchor=at, amount=1)
    times = [e[0] for e in r.entries]
    assert times == sorted(times)
    assert sorted(e[2] for e in r.entries) == sorted(f"g{i}" for i in range(40))
    assert all(r.index[e[2]] is e for e in r.entries) and r.total == len(r.entries)


def test_tokens_reserved_then_settled_never_exceed_what_the_provider_enforces():
    """The simulator charges prompt + max_tokens at admission and settles later;
    we reserve an estimate >= that charge and settle after the answer."""
    rng = random.Random(3)
    window, grace, tpm = 10.0, 0.3, 20_000
    b2 = book(limit=10_000, window=window, grace=grace, tpm=tpm)
    for i in range(300):
        b2.add_ask(ask("s", {REQ: 1, TOK: rng.randint(800, 2500)}))
    admissions = []  # (arrival, charge, done, actual)
    # Settles reach the book a little after the answer, as the worker sends them.
    pending: list[tuple[float, str, int]] = []
    now = 0.0
    while now < 200 and (b2.waiting or pending):
        for due, gid, actual in [p for p in pending if p[0] <= now]:
            b2.settle(TOK, gid, actual)
            pending.remove((due, gid, actual))
        for g in b2.grant_ready(now):
            charge = int(g.ask.needs[TOK]) - 16
            actual = int(charge * rng.uniform(0.4, 1.0))
            arrival = now + rng.uniform(0, grace)
            done = arrival + rng.uniform(1.0, 3.0)
            admissions.append((arrival, charge, done, actual))
            pending.append((done + 0.05, g.grant_id, actual))
        now += 0.05
    # The simulator's view at each admission: charges of requests not yet done, actual of those done.
    admissions.sort()
    for arrival, charge, _, _ in admissions:
        in_window = sum(
            (c if done > arrival else act)
            for t, c, done, act in admissions
            if arrival - window < t <= arrival
        )
        assert in_window <= tpm
    assert len(admissions) > 200


def test_expired_buckets_become_tombstones_and_state_survives_a_restore():
    b = book(limit=100, window=10.0, grace=0.5)
    for i in range(5):
        b.add_ask(ask("s", {REQ: 1, TOK: 100}, ask_id=f"k{i}"))
    grants = b.grant_ready(3.2)
    assert len(grants) >= 2
    b.settle(TOK, grants[0].grant_id, 40)
    state = b.take_dirty()
    assert f"r|{REQ}|{bucket_of(3.2)}" in state and f"r|{REQ}|meta" in state
    restored = book(limit=100, window=10.0, grace=0.5)
    restored.restore(state.items())
    assert restored.rate(REQ).used(4.0) == b.rate(REQ).used(4.0)
    assert restored.rate(TOK).used(4.0) == b.rate(TOK).used(4.0)
    assert restored.rate(REQ).tat == b.rate(REQ).tat
    assert set(restored.granted_asks()) == {g.ask.ask_id for g in grants}
    b.expire(20.0)  # everything left the window: its bucket key goes away
    assert b.take_dirty()[f"r|{REQ}|{bucket_of(3.2)}"] is None


def test_bucket_keys_hold_a_tenth_of_a_second_each():
    assert BUCKET_SECONDS == 0.1
    r = RateBudget(REQ, 100, 10.0, 0.5)
    for t in (10.01, 10.09, 10.1, 10.15, 10.22):
        r.add(t, 1, f"g{t}")
    assert [e[0] for e in r.bucket(bucket_of(10.01))] == [10.01, 10.09]
    assert [e[0] for e in r.bucket(bucket_of(10.1))] == [10.1, 10.15]
    assert r.bucket(bucket_of(10.5)) is None



@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 60), max_size=80), st.integers(-2, 8))
def test_a_bucket_holds_exactly_its_grants_in_time_order(tenths, b):
    r = RateBudget(REQ, 1_000, 10.0, 0.5)
    for i, t in enumerate(sorted(tenths)):  # many grants share a moment, many buckets are empty
        r.add(t / 10, 1, f"g{i}")
    expected = [list(e) for e in r.entries if bucket_of(e[0]) == b]
    assert r.bucket(b) == (expected or None)


# --------------------------------------------------------------------------- pacing and utilization


def test_pacing_spreads_grants_evenly_and_costs_no_throughput():
    limit, window, grace = 60, 10.0, 0.3
    b = book(limit, window, grace, paced=True)
    for i in range(700):
        b.add_ask(ask(f"s{i % 3}", {REQ: 1}))
    times = [g.granted_at for g in drain(b, 0.0, 100.0, jitter=0.03)]
    interval = (window + grace) / limit
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 4 * interval  # no bursts-then-silence at window edges (the start burst costs a gap or two)
    assert sum(1 for t in times[:10] if t == times[0]) <= 3  # a small burst at the start, not a window's worth
    # Over the steady part, the grant rate is the window's: limit per (W + grace).
    steady = [t for t in times if 20.0 <= t < 90.0]
    assert len(steady) / 70.0 == pytest.approx(limit / (window + grace), rel=0.02)


def test_unpaced_budget_bursts_to_the_limit_then_waits_for_the_window():
    b = book(limit=10, window=10.0, grace=0.5, paced=False)
    for i in range(30):
        b.add_ask(ask("s", {REQ: 1}))
    assert len(b.grant_ready(0.0)) == 10
    assert b.grant_ready(5.0) == []
    assert b.next_wakeup(5.0) == pytest.approx(10.5)
    assert len(b.grant_ready(10.5)) == 10


@pytest.mark.parametrize("paced", [True, False])
def test_a_backlog_uses_the_whole_budget_every_window(paced):
    limit, window, grace = 50, 10.0, 0.3
    b = book(limit, window, grace, paced=paced)
    for i in range(1100):
        b.add_ask(ask(f"s{i % 5}", {REQ: 1}))
    arrivals = [g.granted_at + 0.1 for g in drain(b, 0.0, 200.0, jitter=0.01)]
    # Mean count per provider window over the saturated part, against the limit.
    arrivals.sort()
    samples = [t / 10 for t in range(300, 1900)]
    counts = [bisect_right(arrivals, t) - bisect_right(arrivals, t - window) for t in samples]
    utilization = sum(counts) / len(counts) / limit
    assert utilization >= 0.985 * window / (window + grace)
    assert max_in_window(arrivals, window) <= limit


def test_next_wakeup_is_none_when_nothing_waits_or_only_slots_block():
    b = book(slots=1)
    assert b.next_wakeup(0.0) is None
    b.add_ask(ask("s", {REQ: 1}, slot_limit=1, request_id="r1"))
    b.grant_ready(0.0)
    b.add_ask(ask("s", {REQ: 1}, slot_limit=1, request_id="r2"))
    assert b.grant_ready(1.0) == []
    assert b.next_wakeup(1.0) is None  # only a release (an event) can help


# --------------------------------------------------------------------------- fairness


def test_weighted_sites_share_a_contested_budget_by_weight():
    b = book(limit=30, window=10.0, grace=0.0, paced=False)
    for i in range(300):
        b.add_ask(ask("big", {REQ: 1}, weight=2.0))
        b.add_ask(ask("small", {REQ: 1}, weight=1.0))
    grants = drain(b, 0.0, 60.0)
    big = sum(1 for g in grants if g.ask.site_id == "big")
    small = sum(1 for g in grants if g.ask.site_id == "small")
    assert big / small == pytest.approx(2.0, rel=0.1)


def test_a_site_that_comes_back_gets_no_credit_for_its_absence():
    b = book(limit=10, window=10.0, grace=0.0, paced=False)
    for i in range(50):
        b.add_ask(ask("steady", {REQ: 1}))
    drain(b, 0.0, 40.0)  # "steady" has been served 40 times
    for i in range(20):
        b.add_ask(ask("newcomer", {REQ: 1}))
    grants = b.grant_ready(40.0)
    sites = [g.ask.site_id for g in grants]
    assert 4 <= sites.count("newcomer") <= 6  # shares the window, does not take all of it


def test_work_conserving_a_blocked_ask_never_holds_back_one_that_fits():
    b = book(limit=100, window=10.0, grace=0.0, tpm=1000, paced=False)
    b.add_ask(ask("a", {REQ: 1, TOK: 5000}))  # can never fit beside anything
    b.add_ask(ask("a", {REQ: 1, TOK: 100}))
    b.add_ask(ask("b", {"wix_requests:b": 1}))
    b.rate(TOK).add(0.0, 500, "earlier")
    granted = {tuple(g.ask.needs) for g in b.grant_ready(1.0)}
    assert (REQ, TOK) in granted and ("wix_requests:b",) in granted
    assert len(b.waiting) == 1


def test_slots_cap_a_site_across_workers_and_a_holder_may_ask_again():
    b = book(slots=2)
    for rid in ("r1", "r2", "r3"):
        b.add_ask(ask("s", {REQ: 1}, slot_limit=2, request_id=rid))
    assert sorted(g.ask.request_id for g in b.grant_ready(0.0)) == ["r1", "r2"]
    b.add_ask(ask("s", {REQ: 1}, slot_limit=2, request_id="r1"))  # r1 retries: it holds a slot
    assert [g.ask.request_id for g in b.grant_ready(1.0)] == ["r1"]
    b.release_slot("s", "r2")
    assert [g.ask.request_id for g in b.grant_ready(2.0)] == ["r3"]


def test_a_re_ask_keeps_its_place_and_takes_the_new_reply_route():
    b = book(limit=1, paced=False)
    first = b.add_ask(ask("s", ask_id="same", now=0.0))
    first.reply = ("topic", "c1")
    again = b.add_ask(Ask("same", "s", "r", {REQ: 1}, None, 1.0, 5.0, 0, reply=("topic", "c2")))
    assert again is first and len(b.waiting) == 1 and first.reply == ("topic", "c2")
    assert first.arrived_at == 0.0


def test_each_sites_units_in_the_window_split_the_budgets_use():
    b = book(limit=100, window=10.0, grace=0.5, paced=False)
    for _ in range(3):
        b.add_ask(ask("big", {REQ: 1, TOK: 300}))
    b.add_ask(ask("small", {REQ: 1, TOK: 100}))
    grants = b.grant_ready(1.0)
    assert len(grants) == 4
    assert b.used_by_site(REQ, 2.0) == {"big": 3, "small": 1}
    assert b.used_by_site(TOK, 2.0) == {"big": 900, "small": 100}
    assert sum(b.used_by_site(TOK, 2.0).values()) == b.usage(TOK, 2.0)["used_in_window"]
    # Settled tokens count as settled; a grant given back unused no longer counts for its site.
    small = next(g for g in grants if g.ask.site_id == "small")
    b.rate(TOK).count_unused(True)  # a provider learned to give unused tokens back
    b.settle(TOK, grants[0].grant_id, 120)
    b.unused(small.grant_id, small.ask.needs)
    assert b.used_by_site(TOK, 2.0) == {"big": 720}
    assert b.used_by_site(REQ, 2.0) == {"big": 3}
    # The window is W (as used_in_window), and sites with nothing left in it drop out.
    b.add_ask(ask("late", {REQ: 1, TOK: 50}))
    b.grant_ready(8.0)
    assert b.used_by_site(REQ, 10.99) == {"big": 3, "late": 1}
    assert b.used_by_site(REQ, 11.0) == {"late": 1}
    assert b.used_by_site(REQ, 30.0) == {}


def test_site_units_always_add_up_to_the_budgets_use_in_the_window():
    """Whatever the book does (pacing, grants ahead, settles, late sends), the split stays a split."""
    rng = random.Random(11)
    b = book(limit=30, window=10.0, grace=0.3, paced=True, tpm=20_000)
    b.lookahead = 0.5
    for i in range(300):
        b.add_ask(ask(f"s{i % 4}", {REQ: 1, TOK: rng.randint(100, 900)}, weight=1 + i % 2))

    def check(g, now):
        if rng.random() < 0.3:
            b.settle(TOK, g.grant_id, rng.randint(0, 500))
        if rng.random() < 0.1:
            b.late(now, g.grant_id, g.ask.needs, g.granted_at + 1.0)
        for name in (REQ, TOK):
            assert sum(b.used_by_site(name, now).values()) == pytest.approx(b.usage(name, now)["used_in_window"])

    assert len(drain(b, 0.0, 60.0, jitter=0.02, rng=rng, on_grant=check)) > 100


def test_sites_of_grants_survive_a_restore_and_entries_without_one_still_count():
    b = book(limit=100, window=10.0, grace=0.5, paced=False)
    b.add_ask(ask("a", {REQ: 1, TOK: 10}))
    b.add_ask(ask("b", {REQ: 1, TOK: 30}))
    b.grant_ready(1.0)
    state = b.take_dirty()
    # An entry persisted before sites were kept: [granted_at, amount, grant_id, ask_id].
    state[f"r|{REQ}|{bucket_of(1.0)}"].append([1.2, 1.0, "old-grant", "old-ask"])
    restored = book(limit=100, window=10.0, grace=0.5, paced=False)
    restored.restore(state.items())
    assert restored.used_by_site(REQ, 2.0) == {"a": 1, "b": 1}
    assert restored.used_by_site(TOK, 2.0) == {"a": 10, "b": 30}
    assert restored.usage(REQ, 2.0)["used_in_window"] == 3  # the old entry counts, under no site
    assert "old-ask" in restored.granted_asks()
    # What a restored book persists again keeps the sites.
    restored.rate(REQ).dirty.add(bucket_of(1.0))
    sites = {e[2]: e[4] for e in restored.take_dirty()[f"r|{REQ}|{bucket_of(1.0)}"]}
    assert sorted(sites.values()) == ["", "a", "b"] and sites["old-grant"] == ""


def test_a_pass_over_thousands_of_waiting_asks_is_fast():
    b = book(limit=300, window=30.0, grace=0.3)
    for i in range(5000):
        b.add_ask(ask(f"s{i % 50}", {REQ: 1, TOK: 900}, slot_limit=20))
    started = time.perf_counter()
    passes = 0
    now = 0.0
    while passes < 50:
        b.grant_ready(now)
        b.next_wakeup(now)
        now += 0.1
        passes += 1
    per_pass = (time.perf_counter() - started) / passes
    assert per_pass < 0.05, f"{per_pass * 1000:.1f} ms per pass"


# --------------------------------------------------------------------------- adaptation


def test_a_burst_of_429s_is_one_decrease_and_the_budget_climbs_back():
    r = RateBudget(REQ, 100, 10.0, 0.3)
    for t in (0.0, 0.1, 0.2, 0.5):
        r.on_throttled(t)
    assert r.factor == pytest.approx(0.7)
    assert r.effective_limit() == 70
    r.on_throttled(0.0 + r.throttle_cooldown())
    assert r.factor == pytest.approx(0.49)
    for _ in range(100):
        r.recover(1.0)  # ten windows of calm
    assert r.factor == 1.0


def test_remaining_headers_reveal_outside_use_and_it_fades_when_it_stops():
    r = RateBudget(REQ, 100, 10.0, 0.3)
    for i in range(40):
        r.add(i * 0.2, 1, f"g{i}")
    now = 8.0
    r.on_remaining(now, 100, 100 - 40 - 1)  # noise: one request we cannot place
    assert r.external == 0
    r.on_remaining(now, 100, 100 - 40 - 25)  # someone else used 25
    assert r.external == pytest.approx(25)
    assert r.effective_limit() == 100 - 25 - 5  # with a margin for the noise in the estimate
    r.on_throttled(now)  # a 429 as well: the smaller of the two shares, not both cuts
    assert r.effective_limit() == 70
    r.recover(10.0 * r.window)
    r._expire(now + r.window + 0.01)
    assert r.external == 0 and r.effective_limit() == 100


def test_a_burst_of_our_own_at_the_window_edge_is_not_mistaken_for_outside_use():
    """The provider still counts grants that arrived up to `grace` after we made them."""
    r = RateBudget(REQ, 60, 10.0, 0.3)
    for i in range(5):
        r.add(0.0, 1, f"burst{i}")  # arrive around 0.25
    for i in range(55):
        r.add(0.3 + i * 0.17, 1, f"g{i}")
    r.on_remaining(10.1, 60, 0)  # the provider's window (0.1, 10.1] still holds the burst
    assert r.external == 0


def test_book_feedback_updates_requests_and_tokens():
    b = book(limit=100, tpm=100_000)
    b.feedback(1.0, REQ, throttled=True, limit=100, remaining=40, tokens_budget=TOK, tokens_limit=100_000,
               tokens_remaining=50_000)
    assert b.rate(REQ).factor == pytest.approx(0.7)
    assert b.rate(REQ).external == pytest.approx(60)
    assert b.rate(REQ).effective_limit() == 100 - 60 - 5
    # Tokens: the provider counts 50,000 our book does not: they count, one window + grace from now.
    assert b.usage(TOK, 1.0)["used_in_span"] == pytest.approx(50_000)
    assert b.usage(TOK, 1.0 + 10.3)["used_in_span"] == 0


def test_slot_leases_expire_for_requests_that_vanished():
    s = SlotBudget("slots:s", 1, lease_seconds=100.0)
    s.add(0.0, "r1")
    assert not s.fits(50.0, "r2")
    assert s._expire(101.0)
    assert s.fits(101.0, "r2")


# --------------------------------------------------------------------------- the Kafka glue's faust fixes


async def test_the_reply_topic_is_subscribed_once_or_a_worker_stalls_after_3000_answers(monkeypatch):
    """faust's ReplyConsumer subscribed the reply topic twice (itself and the clone
    its stream iterates); the unread copy filled up and stopped all answers."""
    from faust.agents.replies import ReplyConsumer, ReplyPromise

    from streams import faust_fixes
    from streams import worker  # noqa: F401  (the worker's assembly installs every fix)

    assert ReplyConsumer._start_fetcher is faust_fixes.start_reply_fetcher
    added = []
    clones = []  # iterating a faust Topic makes a clone and subscribes it (Topic.__aiter__)
    drained = []

    class FakeTopic:
        async def maybe_declare(self):
            pass

        def __aiter__(self):
            clones.append(object())
            return clones[-1]

    class FakeConsumer:
        _fetchers: dict = {}
        app = type("App", (), {"topics": type("Conductor", (), {"add": lambda self, t: added.append(t)})()})()

        def _reply_topic(self, name):
            return FakeTopic()

        async def sleep(self, seconds):
            pass

        def add_future(self, coro):
            coro.close()
            return "future"

        def _drain_replies(self, topic):
            drained.append(topic)

            async def drain():
                pass
            return drain()

    consumer = FakeConsumer()
    await faust_fixes.start_reply_fetcher(consumer, "f-reply-x")
    assert added == [] and consumer._fetchers == {"f-reply-x": "future"}
    # one subscription, made before _start_fetcher returns (so the worker's first subscription holds it),
    # and it is the one drained
    assert len(clones) == 1 and drained == clones
    # ... and a late or repeated answer to a promise is ignored instead of crashing the ReplyConsumer.
    promise = ReplyPromise("f-reply-x", "c1")
    promise.cancel()
    promise.fulfill("c1", {"late": True})
    done = ReplyPromise("f-reply-x", "c2")
    done.fulfill("c2", 1)
    done.fulfill("c2", 2)
    assert done.result() == 1


def test_an_unused_grant_gives_back_its_room_and_its_place_in_the_pacing_schedule():
    b = book(limit=10, window=10.0, grace=0.3, paced=True)
    for i in range(30):
        b.add_ask(ask("s", {REQ: 1, TOK: 100}))
    first = b.grant_ready(0.0)
    assert first
    tat = b.rate(REQ).tat
    used = b.rate(REQ).used(0.0)
    b.unused(first[0].grant_id, first[0].ask.needs)
    assert b.rate(REQ).used(0.0) == used - 1 and b.rate(TOK).used(0.0) == b.rate(TOK).used(0.0)
    assert b.rate(REQ).tat == pytest.approx(tat - b.rate(REQ).pace_interval())
    # Over a long backlog where every tenth grant comes back unused, the used grants still run at the full rate.
    granted = []

    def maybe_return(g, now):
        granted.append(g)
        if len(granted) % 10 == 0:
            b.unused(g.grant_id, g.ask.needs)

    b2 = book(limit=30, window=10.0, grace=0.3, paced=True)
    b = b2
    for i in range(400):
        b.add_ask(ask("s", {REQ: 1}))
    drain(b, 0.0, 103.0, on_grant=maybe_return)
    used_grants = [g for i, g in enumerate(granted, 1) if i % 10]
    steady = [g for g in used_grants if 20.0 <= g.granted_at < 100.0]
    assert len(steady) / 80.0 == pytest.approx(30 / 10.3, rel=0.03)


# --------------------------------------------------------------------------- grants ahead (lookahead)


@pytest.mark.parametrize("seed", range(6))
def test_grants_ahead_never_let_a_provider_window_exceed_the_limit(seed):
    """Asks granted up to `lookahead` before their room opens, sent from their start within the grace."""
    rng = random.Random(seed)
    limit, window, grace = 40, 10.0, 0.3
    b = book(limit, window, grace, paced=bool(seed % 2), tpm=900)
    b.lookahead = 0.5
    for i in range(600):
        b.add_ask(ask(f"site{i % 7}", {REQ: 1, TOK: rng.randint(5, 40)}))
    arrivals, tokens = [], []

    def sent(g, now):
        assert g.made_at == now and now <= g.granted_at <= now + b.lookahead + 1e-9
        at = g.granted_at + rng.uniform(0, grace)
        arrivals.append(at)
        tokens.append((at, g.ask.needs[TOK]))

    grants = drain(b, 0.0, 200.0, jitter=0.02, rng=rng, on_grant=sent)
    assert len(arrivals) > 300
    assert max_in_window(arrivals, window) <= limit
    tokens.sort()
    for i, (t, _) in enumerate(tokens):  # every token window too
        assert sum(n for u, n in tokens[: i + 1] if u > t - window) <= 900
    assert any(g.granted_at > g.made_at for g in grants)  # it did grant ahead


def test_a_grant_ahead_starts_when_the_room_opens_and_the_answer_says_so():
    b = book(limit=2, window=10.0, grace=0.5, paced=False)
    b.lookahead = 0.5
    for _ in range(3):
        b.add_ask(ask("s", {REQ: 1}))
    assert len(b.grant_ready(0.0)) == 2
    assert b.grant_ready(9.0) == []
    assert b.next_wakeup(9.0) == pytest.approx(10.0)  # room opens at 10.5, granted 0.5 s before
    (g,) = b.grant_ready(10.0)
    assert g.granted_at == pytest.approx(10.5) and g.use_by == pytest.approx(11.0)
    reply = g.as_reply()
    assert reply["ahead"] is True and reply["granted_at"] == pytest.approx(10.5)


def test_an_answer_says_whether_its_ask_had_to_wait_for_room():
    b = book(limit=1, window=10.0, grace=0.5, paced=False)
    first, second = b.add_ask(ask("s")), b.add_ask(ask("s"))
    (g1,) = b.grant_ready(0.0)
    assert g1.ask is first and g1.as_reply()["waited"] is False  # room was there when it came
    (g2,) = b.grant_ready(10.5)
    assert g2.ask is second and g2.as_reply()["waited"] is True  # granted when room appeared


def test_grants_ahead_do_not_hide_someone_elses_use_from_the_remaining_header():
    r = RateBudget(REQ, 30, 10.0, 0.5, paced=False)
    for i in range(3):
        r.add(100.0, 1, f"past{i}")  # reached the provider
    for i in range(5):
        r.add(101.0, 1, f"ahead{i}")  # granted ahead: not sent yet at t = 100.5
    r.on_remaining(100.5, 30, 30 - 3 - 12)  # the provider counts our 3 and 12 of someone else
    assert r.external == 12


# --------------------------------------------------------------------------- leases


def lease_book(limit: int = 120, window: float = 10.0, grace: float = 0.3, paced: bool = True) -> BudgetBook:
    b = book(limit, window, grace, paced=paced)
    b.lease_seconds, b.lease_below = 2.0, 0.5
    return b


def test_a_lease_is_granted_only_while_the_budget_has_plenty_of_room():
    b = lease_book(limit=120, paced=False)  # a lease's rate: at most 0.25 x 120 x 2 / 10.3 = 5 units
    g = b.lease(_lease_ask("s", 20), 0.0)
    assert g is not None and g.lease_units == 5 and g.lease_until == pytest.approx(2.0)
    assert g.use_by == pytest.approx(2.3) and g.granted_at == 0.0
    reply = g.as_reply()
    assert reply["lease_units"] == 5 and reply["lease_until"] == pytest.approx(2.0)
    assert b.rate(REQ).used(0.0) == 5
    # Not for more than one budget, a slot, a single unit, or while someone waits on the budget.
    assert b.lease(_lease_ask("s", 20, {REQ: 1, TOK: 10}), 0.0) is None
    assert b.lease(_lease_ask("s", 20, slot_limit=3), 0.0) is None
    assert b.lease(_lease_ask("s", 1), 0.0) is None
    # An ask just come is no contention yet; one a pass found no room for is.
    big = b.add_ask(ask("other", {REQ: 200}))
    assert b.lease(_lease_ask("s", 20), 0.0) is not None
    assert b.grant_ready(0.0) == [] and big.waited
    assert b.lease(_lease_ask("s", 20), 0.0) is None
    b.drop_asks()
    # Not beyond half the limit, counting the leases out.
    for i in range(50):  # with the two leases: 60
        b.rate(REQ).add(0.1, 1, f"x{i}")
    assert b.rate(REQ).used(0.1) == 60
    assert b.lease(_lease_ask("s", 20), 0.1) is None
    # Not while the provider pushes back.
    b2 = lease_book(limit=120, paced=False)
    b2.rate(REQ).on_throttled(0.0)
    assert b2.lease(_lease_ask("s", 20), 0.0) is None


def test_each_refused_lease_is_counted_with_its_reason():
    """A refusal cascade showed only as round trips before: the coordinator now exports why (leases.py)."""
    b = lease_book(limit=120, paced=False)
    assert b.lease(_lease_ask("s", 20, {REQ: 1, TOK: 10}), 0.0) is None  # not leasable at all: no refusal
    assert b.lease(_lease_ask("s", 1), 0.0) is None and b.lease_refusals == {}
    b.rate(REQ).add(0.0, 1, "one")
    b.add_ask(ask("other", {REQ: 200}))  # does not fit: it waits, found no room for
    assert b.grant_ready(0.0) == []
    assert b.lease(_lease_ask("s", 20), 0.0) is None
    b.drop_asks()
    for i in range(59):
        b.rate(REQ).add(0.1, 1, f"x{i}")
    assert b.lease(_lease_ask("s", 20), 0.1) is None
    pushed = lease_book(limit=120, paced=False)
    pushed.rate(REQ).on_throttled(0.0)
    assert pushed.lease(_lease_ask("s", 20), 0.0) is None
    small = lease_book(limit=10, paced=False)  # 0.25 x 10 x 2 / 10.3: under 2 units
    assert small.lease(_lease_ask("s", 20), 0.0) is None
    assert b.lease_refusals == {(REQ, "contended"): 1, (REQ, "near the limit"): 1}
    assert pushed.lease_refusals == {(REQ, "pushed back"): 1} and small.lease_refusals == {(REQ, "too small"): 1}


def test_the_coordinator_exports_lease_refusals_once_and_clears_them():
    from streams import metrics
    from streams.limiter.coordinator import Coordinator

    c = Coordinator()
    c.book.lease_refusals = {("wix_requests:site-a", "contended"): 3, ("wix_requests:site-b", "contended"): 2}
    series = metrics.lease_refusals_total.labels("wix_requests", "contended")
    before = series._value.get()
    c._export_lease_refusals()
    c._export_lease_refusals()
    assert series._value.get() - before == 5 and c.book.lease_refusals == {}


def test_leases_come_back_once_the_asks_a_pass_found_no_room_for_are_granted():
    b = lease_book(limit=120, paced=False)
    b.rate(REQ).add(0.0, 118, "full")
    waiting = b.add_ask(ask("s", {REQ: 5}))
    assert b.grant_ready(0.0) == [] and waiting.waited
    assert b.lease(_lease_ask("t", 20), 1.0) is None  # contended: every unit goes through the line
    (g,) = b.grant_ready(10.4)  # the window moved on: room for it
    assert g.ask is waiting
    assert b.lease(_lease_ask("t", 20), 10.4) is not None


def test_a_site_budget_leases_for_its_own_period_so_the_sites_next_blog_finds_units():
    # Wix at 200 calls/min per site: at a quarter of its rate, a 2 s lease would hold one unit (none is
    # granted); its spec's 30 s lease holds up to 24, given back at its end if the site sends nothing.
    specs = {"wix_requests:": {"limit": 200, "window": 60.0, "paced": True, "lease_seconds": 30.0},
             REQ: {"limit": 200, "window": 60.0, "paced": True}}
    b = BudgetBook(specs, grace=0.5, lease_seconds=2.0, lease_below=0.85)
    g = b.lease(_lease_ask("s", 4, {"wix_requests:s": 1}), 0.0)
    assert g is not None and g.lease_units == 4 and g.lease_until == pytest.approx(30.0)
    assert b.lease(_lease_ask("s", 40, {"wix_requests:s": 1}), 0.0).lease_units == int(0.25 * 200 * 30 / 60.5)
    assert b.lease(_lease_ask("s", 4, {REQ: 1}), 0.0) is None  # the book's 2 s: one unit, no lease
    b.end_lease("wix_requests:s", g.grant_id, 1)
    assert b.rate("wix_requests:s").used(31.0) == 1 + int(0.25 * 200 * 30 / 60.5)


def _lease_ask(site: str, units: int, needs: dict | None = None, slot_limit: int | None = None) -> Ask:
    a = ask(site, needs or {REQ: 1}, slot_limit=slot_limit)
    a.lease = units
    return a


def test_an_ask_in_line_may_be_answered_with_a_lease_and_unused_units_come_back():
    b = lease_book(limit=120, paced=False)
    b.add_ask(_lease_ask("s", 4))
    (g,) = b.grant_ready(1.0)
    assert g.lease_units == 4 and g.granted_at == 1.0 and g.lease_until == pytest.approx(3.0)
    r = b.rate(REQ)
    assert r.used_in_last(1.5, 10.0) == 4 and r.ahead(1.5) == 0  # its units may be at the provider already
    # Counted from the grant until lease end + window + grace: any unit may leave up to lease end + grace.
    assert r.used(1.0) == 4 and r.used(3.0 + 10.3 - 0.01) == 4
    b.end_lease(REQ, g.grant_id, 1)
    assert r.used(13.0) == 1 and r.used(3.0 + 10.3) == 0
    # A grant ahead (the budget is full) is never a lease.
    full = lease_book(limit=2, paced=False)
    full.lookahead = 1.0
    full.add_ask(ask("s")), full.add_ask(ask("s"))
    full.grant_ready(0.0)
    full.add_ask(_lease_ask("s", 4))
    (ahead,) = full.grant_ready(9.5)
    assert ahead.granted_at > ahead.made_at and ahead.lease_units == 0


def test_leases_survive_a_restore_and_still_count_until_their_end():
    b = lease_book(limit=120, paced=False)
    g = b.lease(_lease_ask("s", 5), 0.0)
    restored = lease_book(limit=120, paced=False)
    restored.restore(b.take_dirty().items())
    r = restored.rate(REQ)
    assert r.used(0.5) == 5 and r.used(2.0 + 10.3 - 0.01) == 5 and r.ahead(0.5) == 0
    restored.end_lease(REQ, g.grant_id, 2)
    assert r.used(1.0) == 2


@pytest.mark.parametrize("seed", range(12))
def test_leases_beside_the_fair_line_never_let_a_provider_window_exceed_the_limit(seed):
    """Plain asks and leases, load rising above the limit and falling back; every unit sent as late as allowed."""
    rng = random.Random(seed)
    limit, window, grace = 60, 10.0, 0.3
    b = lease_book(limit, window, grace, paced=bool(seed % 2))
    b.lookahead = 0.5 if seed % 3 else 0.0
    # The default threshold (0.85), and leases longer than the window's sixth (a site budget's).
    b.lease_below = 0.85 if seed % 4 >= 2 or seed >= 8 else 0.5
    b.lease_seconds = 5.0 if seed >= 8 else 2.0
    arrivals: list[float] = []
    ends: list[tuple[float, str, int]] = []  # (lease end, grant id, units taken)
    leases = 0

    def sent(g, now):
        nonlocal leases
        if g.lease_units:
            leases += 1
            taken = rng.randint(0, g.lease_units)
            last = rng.random() < 0.5  # all at the last moment allowed, or any time until the end
            for _ in range(taken):  # on the wire within the grace
                at = g.lease_until if last else rng.uniform(g.granted_at, g.lease_until)
                arrivals.append(at + (grace if last else rng.uniform(0, grace)))
            ends.append((g.lease_until, g.grant_id, taken))
        else:
            arrivals.append(g.granted_at + rng.uniform(0, grace))

    now = 0.0
    while now < 120.0:
        for end in [e for e in ends if e[0] <= now]:  # the worker returns what it did not take
            ends.remove(end)
            b.end_lease(REQ, end[1], end[2])
        busy = now % 24.0 >= 12.0  # about three times the limit; otherwise half of it
        if rng.random() < (0.6 if busy else 0.1):  # per 30 ms: 20 or 3 asks a second (limit: 6)
            if rng.random() < 0.5:
                b.add_ask(_lease_ask(f"site{rng.randint(0, 4)}", rng.randint(2, 12)))
            else:
                b.add_ask(ask(f"site{rng.randint(0, 4)}", {REQ: 1}))
        if rng.random() < 0.05:
            g = b.lease(_lease_ask(f"site{rng.randint(0, 4)}", rng.randint(2, 12)), now)
            if g is not None:
                sent(g, now)
        for g in b.grant_ready(now):
            sent(g, now)
        now += rng.uniform(0.01, 0.05)
    assert leases > (5 if seed >= 8 else 10)  # longer leases hold their units longer: fewer of them
    assert max_in_window(arrivals, window) <= limit


# --------------------------------------------------------------------------- the worker's lease pools


class _Casts:
    """Stands in for the coordinator agent: records the one-way messages a worker sends it."""

    def __init__(self):
        self.values = []

    async def cast(self, value):
        self.values.append(value)


def _lease_reply(units: int, until_in: float, grant_id: str = "g1") -> dict:
    now = time.time()
    return {"grant_id": grant_id, "granted_at": now, "lease_until": now + until_in, "lease_units": units,
            "use_by": now + until_in + 0.3, "last_use": now + until_in + 5.0}


async def _wait_for(predicate, seconds: float = 5.0):
    import asyncio

    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline
        await asyncio.sleep(0.01)


async def test_a_worker_takes_leased_units_until_the_end_then_returns_the_rest(monkeypatch):
    import streams.limiter.client as limiter

    casts = _Casts()
    monkeypatch.setattr(limiter, "_cast", casts.cast)
    budgets = limiter.Budgets()
    pool = budgets._pool({"replicate_requests": 1.0}, None)
    assert budgets._pool({"openai_requests": 1.0, "openai_tokens": 900.0}, None) is None  # generate: never
    assert budgets._pool({"wix_requests:s": 1.0}, 3) is None  # with a slot: never
    lease = budgets._add_lease("replicate_requests", pool, _lease_reply(4, 0.2), taken=1)
    assert lease is not None and lease.left == 3
    assert pool.take(time.time()) is lease and pool.take(time.time()) is lease and lease.left == 1
    await _wait_for(lambda: casts.values)  # the lease ended: one unit was never taken
    assert casts.values == [{"op": "lease_end", "budget": "replicate_requests", "grant_id": "g1", "taken": 3}]
    assert pool.take(time.time()) is None and pool.leases == []


async def test_a_lease_that_arrives_after_its_end_goes_back_whole_and_a_429_ends_the_others(monkeypatch):
    import streams.limiter.client as limiter

    casts = _Casts()
    monkeypatch.setattr(limiter, "_cast", casts.cast)
    budgets = limiter.Budgets()
    pool = budgets._pool({"replicate_requests": 1.0}, None)
    assert budgets._add_lease("replicate_requests", pool, _lease_reply(4, -0.1, "late"), taken=1) is None
    await _wait_for(lambda: casts.values)
    assert casts.values[-1]["grant_id"] == "late" and casts.values[-1]["taken"] == 0
    lease = budgets._add_lease("replicate_requests", pool, _lease_reply(5, 30.0, "open"), taken=0)
    assert pool.take(time.time()) is lease
    budgets.end_leases("replicate_requests")  # the provider said 429: take nothing more from it
    await _wait_for(lambda: len(casts.values) == 2)
    assert casts.values[-1]["grant_id"] == "open" and casts.values[-1]["taken"] == 1
    assert pool.take(time.time()) is None
    assert pool.quiet_until > time.time()  # and no refill for a while


async def test_a_lease_in_use_is_renewed_when_it_ends_and_an_idle_one_is_not(monkeypatch):
    """A site's Wix lease (30 s) ending before the site's next blog: renewed at its end if it was used,
    so that blog takes its units locally instead of paying a round trip; a lease nobody took from is not."""
    import streams.limiter.client as limiter

    casts, renewals = _Casts(), []
    monkeypatch.setattr(limiter, "_cast", casts.cast)
    budgets = limiter.Budgets()

    async def refill(budget, pool, site_id, weight):
        renewals.append((budget, site_id, weight))
        pool.refilling = False

    monkeypatch.setattr(budgets, "_refill", refill)
    budgets.lease_seconds = 0.02  # the budgets' usual lease; a site's lasts longer (here 0.1 s)
    pool = budgets._pool({"wix_requests:s": 1.0}, None)
    pool.asker = ("s", 2.0)
    budgets._add_lease("wix_requests:s", pool, _lease_reply(3, 0.1, "used"), taken=1)
    await _wait_for(lambda: renewals)
    assert renewals == [("wix_requests:s", "s", 2.0)]
    budgets._add_lease("wix_requests:s", pool, _lease_reply(3, 0.1, "idle"), taken=0)
    await _wait_for(lambda: len(casts.values) == 2)  # both ended, their untaken units given back
    # A usual (short, busy) lease is refilled as its units are taken, not renewed at its end.
    budgets._add_lease("wix_requests:s", pool, _lease_reply(3, 0.03, "short"), taken=1)
    await _wait_for(lambda: len(casts.values) == 3)
    assert renewals == [("wix_requests:s", "s", 2.0)]


def test_a_pool_asks_for_what_one_lease_period_took_lately():
    import streams.limiter.client as limiter

    pool = limiter._LeasePool()
    assert pool.wanted() == 2
    for i in range(10):
        pool.note(100.0 + i * 0.1, 2.0)
    assert pool.wanted() == 16  # 10 in the last 2 s, half again to spare, plus one
    pool.note(103.5, 2.0)  # the old ones age out
    assert len(pool.recent) == 1


def test_a_remaining_figure_seen_long_ago_is_not_read_as_outside_use_now():
    """Reports that waited out a broker outage in a worker's producer arrive with a full window's figure
    from before it; compared with our (empty) window now they looked like 134 of 150 used by someone else."""
    b = book(limit=150, window=30.0)
    now = 1000.0
    b.feedback(now, REQ, throttled=False, limit=150, remaining=16, seen_at=now - 75.0)
    assert b.rate(REQ).external == 0 and b.rate(REQ).effective_limit() == 150
    b.feedback(now, REQ, throttled=False, limit=150, remaining=16, seen_at=now - 0.5)  # fresh: it counts
    assert b.rate(REQ).external == pytest.approx(134)
