"""The coordinator's upkeep a slice a second (streams/limiter/sweep.py), and what the book does with it.

At 10,000 sites, expiring every per-site budget and slot and pruning every idle site each second held
the coordinator's loop 37 ms at once; a slice each second keeps that bounded, and idle state still goes
within a round of when it would have gone.
"""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.rates import RateBudget
from streams.limiter.sweep import Sweep

REQ, TOK = "openai_requests", "openai_tokens"


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5_000), least=st.integers(1, 600), share=st.sampled_from([0.05, 0.1, 0.5, 1.0]))
def test_a_round_gives_every_key_once_a_bounded_slice_at_a_time(n, least, share):
    keys = {f"k{i}": i for i in range(n)}
    sweep = Sweep(least=least, share=share)
    size = max(least, int(n * share))
    calls = max(1, math.ceil(n / size))
    seen: list[str] = []
    for _ in range(calls):
        chunk = list(sweep.take(keys))
        assert len(chunk) <= size
        seen += chunk
    assert sorted(seen) == sorted(keys)  # each once, in as many calls as slices
    assert len(list(sweep.take(keys))) == min(n, size)  # the next round starts


def test_keys_added_during_a_round_come_in_the_next_and_gone_ones_are_still_given():
    keys = {f"k{i}": i for i in range(10)}
    sweep = Sweep(least=4, share=0.1)
    first = list(sweep.take(keys))
    keys["new"] = 1
    del keys[first[0]]
    rest = list(sweep.take(keys)) + list(sweep.take(keys))
    assert "new" not in rest and len(first + rest) == 10  # the caller skips what is gone
    assert "new" in list(sweep.take(keys)) + list(sweep.take(keys)) + list(
        sweep.take(keys))


def busy_book(sites: int) -> BudgetBook:
    """`sites` sites, each with a Wix call and an article granted at 1000 s and a slot held."""
    specs = {REQ: {"limit": 10**6, "window": 60}, TOK: {"limit": 10**9, "window": 60},
             "wix_requests:": {"limit": 200, "window": 60}}
    b = BudgetBook(specs, grace=0.5, slot_default=20)
    b.instance = "t-"
    for s in range(sites):
        b.add_ask(Ask(f"w{s}", f"s{s}", f"r{s}", {f"wix_requests:s{s}": 1}, None, 1.0, 1000.0, 0))
        b.add_ask(Ask(f"a{s}", f"s{s}", f"r{s}", {REQ: 1, TOK: 500}, 20, 1.0, 1000.0, 0))
    assert len(b.grant_ready(1000.0)) == 2 * sites
    return b


def upkeep(b: BudgetBook, start: float, seconds: int) -> None:
    """expire and prune once a second, each followed by a persist pass, as the coordinator runs them."""
    for second in range(seconds):
        b.expire(start + second)
        b.prune(start + second)
        b.take_dirty()


def test_a_second_of_upkeep_at_10000_sites_looks_at_a_slice_and_idle_state_still_goes(monkeypatch):
    b = busy_book(10_000)
    looked_at = [0]
    expire = RateBudget._expire

    def counting(rate, now):
        looked_at[0] += 1
        return expire(rate, now)

    monkeypatch.setattr(RateBudget, "_expire", counting)
    b.expire(1000.5)
    b.prune(1000.5)
    assert looked_at[0] <= 2 * 1_000 + 10  # a tenth of the per-site budgets, twice, and the global ones
    for site in range(10_000):  # every request ends
        b.release_slot(f"s{site}", f"r{site}")
    # The windows (60 s) and the idle time (60 s) pass, then one round of ten slices and a call more.
    upkeep(b, 1001.0, 60 + int(b.idle_keep) + 11)
    assert b.sizes()["rates"] == 2 and b.sizes()["slots"] == 0 and b.sizes()["vtimes"] == 0


def test_few_sites_are_all_looked_at_every_second():
    """300 sites: each second's upkeep sees every one, so their state goes as soon as it may."""
    b = busy_book(300)
    for site in range(300):
        b.release_slot(f"s{site}", f"r{site}")
    upkeep(b, 1000.5, 2)  # the slots, once their emptying is persisted
    assert b.sizes()["slots"] == 0
    upkeep(b, 1002.5, 57)
    assert b.sizes()["rates"] == 2 + 300  # their grants are still in the window (60.5 s from 1000)
    upkeep(b, 1059.5, 3)  # 1060.5: out of it, and gone once that is persisted
    assert b.sizes()["rates"] == 2 and b.sizes()["vtimes"] == 0  # idle since 1000.5, for idle_keep (60 s)
