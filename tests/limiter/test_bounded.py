"""The coordinator's memory is bounded by what is live, however long the load lasts.

A long simulated load with thousands of sites coming and going: every second some
sites arrive with a few generate asks (OpenAI requests + tokens + a slot) and Wix
calls, one big site always waits, granted requests release their slots a few
seconds later. The book is driven as the coordinator drives it (a pass, then
`expire` and `prune` once a second). Throughout, the waiting-ask heaps hold at most
about twice the live asks, and the per-site state (virtual times, Wix budgets,
slots) only the sites active lately; after the load, nothing but the global budgets.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter.asks import BULK, INTERACTIVE
from streams.limiter.book import Ask, BudgetBook
from streams.limiter.rates import bucket_of

REQ = "openai_requests"
TOK = "openai_tokens"
WINDOW = 10.0


def book() -> BudgetBook:
    specs = {
        REQ: {"limit": 400, "window": WINDOW, "paced": True},
        TOK: {"limit": 200_000, "window": WINDOW},
        "wix_requests:": {"limit": 20, "window": WINDOW, "paced": True},
    }
    b = BudgetBook(specs, grace=0.3, slot_default=3)
    b.instance = "t-"
    return b


def wix(site: str) -> str:
    return f"wix_requests:{site}"


def run_load(b: BudgetBook, seconds: int, rng: random.Random, check=None) -> dict[str, set[str]]:
    """Drive `b` for `seconds` of load; returns which sites asked in each second."""
    n = 0
    releases: list[tuple[float, str, str]] = []
    active: dict[int, set[str]] = {}
    for second in range(seconds):
        sites = {f"site-{second}-{k}" for k in range(rng.randint(5, 15))}  # new sites every second
        sites |= {f"site-{second - 3}-0", "big"}  # and some that come back
        active[second] = sites
        for site in sorted(sites):
            for _ in range(rng.randint(1, 4) if site != "big" else 3):
                n += 1
                b.add_ask(Ask(f"a{n}", site, f"r{n}", {REQ: 1, TOK: rng.randint(200, 900)}, 3, 1.0, second, 0))
            n += 1
            b.add_ask(Ask(f"a{n}", site, "", {wix(site): 1}, None, 1.0, second, 0))
        for step in range(10):
            now = second + step / 10
            for grant in b.grant_ready(now):
                if grant.ask.slot_limit is not None:
                    releases.append((now + rng.uniform(1, 4), grant.ask.site_id, grant.ask.request_id))
            for at, site, request_id in [r for r in releases if r[0] <= now]:
                b.release_slot(site, request_id)
                releases.remove((at, site, request_id))
        b.expire(second + 1.0)
        b.prune(second + 1.0)
        b.take_dirty()
        if check:
            check(b, second + 1.0, active)
    return active


def test_a_long_load_with_sites_coming_and_going_keeps_every_structure_bounded():
    b = book()
    rng = random.Random(7)
    worst: dict[str, float] = {}

    def check(b: BudgetBook, now: float, active: dict[int, set[str]]) -> None:
        live = {budget: sum(1 for a in b.waiting.values() if budget in a.needs) for budget in b._amounts}
        for budget, heap in b._amounts.items():
            assert len(heap) <= 2 * live[budget] + 32, (budget, len(heap), live[budget])
        assert set(b._amounts) == {budget for a in b.waiting.values() for budget in a.needs}
        waiting_sites = {a.site_id for a in b.waiting.values()}
        recent = set().union(*(sites for second, sites in active.items() if second >= now - b.idle_keep - 3))
        vtime_sites = {site for _, site in b.vtime}
        assert vtime_sites <= waiting_sites | recent
        wix_rates = {name.split(":", 1)[1] for name in b.rates if ":" in name}
        assert wix_rates <= waiting_sites | recent
        slot_sites = {name.split(":", 1)[1] for name in b.slots}
        holders = {name.split(":", 1)[1] for name, s in b.slots.items() if s.holders}
        assert slot_sites <= holders | waiting_sites | recent  # an emptied slot goes once its state is persisted
        sizes = b.sizes()
        worst["heap_per_live"] = max(worst.get("heap_per_live", 0), sizes["heap_entries"] / max(1, sizes["waiting"]))
        worst["vtimes"] = max(worst.get("vtimes", 0), sizes["vtimes"])

    active = run_load(b, 300, rng, check)
    seen = set().union(*active.values())
    assert len(seen) > 2500  # thousands of sites came and went
    # Bounded by the sites of about one window (idle_keep), not by all of them.
    recent_per_window = max(len(set().union(*(active[s] for s in range(t, t + int(WINDOW) + 2))))
                            for t in range(0, 300 - int(WINDOW) - 2))
    assert max(len(s) for s in active.values()) < recent_per_window
    assert worst["vtimes"] <= 2 * (recent_per_window + len(b.waiting)) + 10
    assert worst["vtimes"] < len(seen) / 5

    # The load stops: everything waiting is granted, every slot released, windows pass.
    now = 300.0
    for name, slots in b.slots.items():
        for request_id in list(slots.holders):
            b.release_slot(name.split(":", 1)[1], request_id)
    while b.waiting:
        for grant in b.grant_ready(now):
            if grant.ask.slot_limit is not None:
                b.release_slot(grant.ask.site_id, grant.ask.request_id)
        now += 0.1
        assert now < 400.0
    for _ in range(3):
        now += WINDOW + b.idle_keep
        b.expire(now)
        b.prune(now)
        b.take_dirty()
    assert b.sizes() == {"waiting": 0, "heap_entries": 0, "vtimes": 0, "idle_sites": 0, "budgets_waited_on": 0,
                         "rates": 2, "slots": 0}


def test_the_lazy_heap_is_rebuilt_when_granted_entries_outnumber_waiting_ones():
    b = book()
    # An ask its site's slot holds back keeps the heap alive; thousands pass through beside it.
    b.add_ask(Ask("holder", "capped", "r-holder", {REQ: 1, TOK: 1}, 1, 1.0, 0.0, 0))
    b.add_ask(Ask("blocked", "capped", "r-blocked", {REQ: 1, TOK: 1}, 1, 1.0, 0.0, 0))
    assert [g.ask.ask_id for g in b.grant_ready(0.0)] == ["holder"]
    now = WINDOW
    for i in range(5000):
        b.add_ask(Ask(f"a{i}", f"s{i % 100}", f"r{i}", {REQ: 1, TOK: 5}, None, 1.0, now, 0))
        b.grant_ready(now)
        now += WINDOW  # a new window every time: the small ask fits at once
        assert len(b._amounts[TOK]) <= 2 * len(b.waiting) + 32
    assert list(b.waiting) == ["blocked"]


def test_pruning_does_not_change_who_is_granted_what():
    """Two identical books under the same load, one pruned every second: the same grants."""
    def grants(prune: bool) -> list[tuple[str, float]]:
        b = book()
        rng = random.Random(3)
        out = []
        n = 0
        for second in range(120):
            for site in (["big", "mid"] + [f"s{second % 7}", f"t{second}"]):
                for _ in range(rng.randint(0, 3)):
                    n += 1
                    b.add_ask(Ask(f"a{n}", site, f"r{n}", {REQ: 1}, None, 2.0 if site == "mid" else 1.0, second, 0))
            for step in range(10):
                out += [(g.ask.ask_id, g.granted_at) for g in b.grant_ready(second + step / 10)]
            b.expire(second + 1.0)
            if prune:
                b.prune(second + 1.0)
        return out

    assert grants(prune=True) == grants(prune=False)


def test_dropped_state_is_deleted_from_the_table_and_a_budget_made_again_is_kept():
    b = book()
    b.add_ask(Ask("a1", "gone", "r1", {wix("gone"): 1}, 2, 1.0, 0.0, 0))
    assert [g.ask.ask_id for g in b.grant_ready(0.0)]
    b.take_dirty()
    b.release_slot("gone", "r1")
    b.take_dirty()
    now = 0.0
    dirty = {}
    for _ in range(3):
        now += WINDOW + b.idle_keep
        b.expire(now)
        b.prune(now)
        dirty.update(b.take_dirty())
    assert dirty.get(f"r|{wix('gone')}|meta", "missing") is None
    assert dirty.get("slots:gone", "missing") is None
    # Dropped, then used again before the next persist: the new state wins.
    b.add_ask(Ask("a2", "back", "r2", {wix("back"): 1}, 2, 1.0, now, 0))
    b.grant_ready(now)
    b.take_dirty()
    b.release_slot("back", "r2")
    b.take_dirty()
    for _ in range(3):
        now += WINDOW + b.idle_keep
        b.expire(now)
        b.prune(now)
        if wix("back") not in b.rates:
            break  # dropped by this prune; its deletion is not persisted yet
        b.take_dirty()
    assert wix("back") not in b.rates and "slots:back" not in b.slots
    b.add_ask(Ask("a3", "back", "r3", {wix("back"): 1}, 2, 1.0, now, 0))
    b.grant_ready(now)
    dirty = b.take_dirty()
    assert dirty[f"r|{wix('back')}|meta"] is not None
    assert dirty["slots:back"]["holders"] == {"r3": now}


def test_a_persist_pass_writes_what_changed_and_visits_only_the_budgets_that_changed():
    """take_dirty visits the rates its book was told changed (rates.DirtyParts), not all of them; over a
    long load with sites coming and going (and pruned), that is exactly the rates with dirty parts, and
    it writes the same keys a scan of every rate would."""
    b = book()
    rng = random.Random(11)
    take = b.take_dirty
    passes = []

    def checked() -> dict:
        changed = {name for name, rate in b.rates.items() if rate.dirty}
        expected = {f"r|{name}|{part}" for name in changed for part in b.rates[name].dirty}
        expected |= set(b.dirty_slots) | set(b._dropped)
        assert b._changed == changed
        out = take()
        assert set(out) == expected
        assert not b._changed and not any(rate.dirty for rate in b.rates.values())
        passes.append(len(changed))
        return out

    b.take_dirty = checked  # type: ignore[method-assign]
    run_load(b, 120, rng)
    assert len(passes) == 120 and max(passes) > 20  # a real mix: many budgets changed in a second
    # With thousands of clean budgets, a pass after one change visits that one.
    for k in range(3000):
        b.rate(wix(f"idle-{k}"))
    b.take_dirty()
    b.rate(wix("idle-7")).add(500.0, 1, "g-one")
    assert set(b.take_dirty()) == {f"r|{wix('idle-7')}|meta", f"r|{wix('idle-7')}|{bucket_of(500.0)}"}
    assert passes[-1] == 1


class FullSweep(BudgetBook):
    """prune() looking at every site's service, as it did before it tracked the sites that stopped waiting."""

    def prune(self, now: float) -> None:
        self._stopped = set(self.vtime)
        super().prune(now)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ask", "grant", "prune", "drop"]), st.integers(0, 5),
                          st.sampled_from([INTERACTIVE, BULK]), st.integers(1, 3)), min_size=1, max_size=80))
def test_prune_drops_what_a_sweep_of_every_site_drops(steps):
    """prune() visits only the sites that stopped waiting (and those already idle): it must keep and
    drop the same services as a sweep of every site, in both lanes, across drops of the whole line."""
    books = [book(), FullSweep(book().rate_specs, grace=0.3, slot_default=3)]
    books[1].instance = "t-"
    now, n = 0.0, 0
    for op, site, lane, count in steps:
        now += 0.7
        for b in books:
            if op == "ask":
                for k in range(count):
                    b.add_ask(Ask(f"a{n}-{k}", f"s{site}", f"r{n}-{k}", {REQ: 1, TOK: 300}, None, 1.0, now, 0,
                                  lane=lane))
            elif op == "grant":
                b.grant_ready(now)
            elif op == "prune":
                b.expire(now)
                b.prune(now)
            else:
                b.drop_asks()
        n += 1
        assert books[0].vtime == books[1].vtime
        assert books[0]._idle_since == books[1]._idle_since


def test_a_dropped_line_leaves_no_service_behind():
    """drop_asks() (the coordinator losing its line) stops every site waiting at once: prune forgets them too."""
    b = book()
    for k in range(3_000):  # more than a window's room: most still wait when the line is dropped
        b.add_ask(Ask(f"a{k}", f"s{k % 3}", f"r{k}", {REQ: 1, TOK: 30}, None, 1.0, 0.0, 0))
    b.grant_ready(0.0)
    assert b.vtime and len(b._waiting_sites[REQ]) == 3
    b.drop_asks()
    for second in range(1, int(WINDOW) + 3):
        b.expire(float(second))
        b.prune(float(second))
    assert b.vtime == {} and b._idle_since == {}
