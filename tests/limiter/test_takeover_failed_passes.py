"""A takeover after passes whose writes failed, with leases, a paced budget and learned token counting.

tests/limiter/test_takeover_mid_pass.py cuts passes that were each written whole before. Here a pass
may also fail half-way (some records land, the broker never acks): the coordinator keeps its writes
and sends them again with the next pass's (`coordinator.pass_writes`), so the changelog holds holes
and repeats, and the cut may fall in any attempt. Leases (units counted at their last usable moment),
a paced requests budget (its schedule in the budget's meta key) and a token budget that learns
whether unused tokens come back (every entry's count changes at once) all write keys in one pass.
Whatever the cut, the next owner holds every grant, answers again only whole grants with their
slots, and counts every entry at least as its own restored rules say.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.coordinator import pass_writes
from streams.limiter.tokens import provider_count_of

from .test_takeover_mid_pass import IMG, REQ, TOK, check_restored, restored_book


def _book() -> BudgetBook:
    specs = {
        REQ: {"limit": 300, "window": 10.0, "paced": True},  # a grant every 35 ms at most: some share a key
        TOK: {"limit": 60_000, "window": 10.0},
        IMG: {"limit": 400, "window": 10.0, "paced": False},
    }
    return BudgetBook(specs, grace=0.5, slot_default=5, lease_seconds=2.0)


def _run(seed: int, passes: int):
    """Passes of a coordinator whose writes fail now and then. Returns the changelog's records, the
    record where each acked pass ends, each attempt's (first record, time), the entries after each
    acked pass (with when each leaves its window), every grant's needs, each slotted grant's (site,
    request, the acked pass count when its slot was released), and the requests budget's pacing
    schedule after the pass that granted each of its grants."""
    rng = random.Random(seed)
    b = _book()
    b.instance = "old-"
    log: list[tuple[str, object]] = []
    ends: list[int] = []
    after: list[dict[tuple[str, str], float]] = []
    attempts: list[tuple[int, float]] = []
    needs: dict[str, dict] = {}
    granted: list = []
    slotted: dict[str, tuple[str, str, int]] = {}
    pending: dict[str, object] = {}
    paced: dict[str, float] = {}
    now, n, offset = 1_000.0, 0, 0
    while len(ends) < passes:
        now += rng.uniform(0.001, 0.05) if rng.random() < 0.3 else rng.uniform(0.05, 1.6)  # passes come every few ms too
        for _ in range(rng.randint(0, 4)):
            n += 1
            site = f"site{rng.randint(1, 4)}"
            kind = rng.random()
            if kind < 0.45:
                ask = Ask(f"a{n}", site, f"r{n}", {REQ: 1.0, TOK: float(rng.randint(100, 900))}, 5, 1.0, now, 0)
            elif kind < 0.7:
                ask = Ask(f"a{n}", site, f"r{n}", {IMG: 1.0}, None, 1.0, now, 0)
            else:  # a worker refilling its units: a lease when there is plenty of room
                ask = Ask(f"a{n}", site, f"r{n}", {IMG: 1.0}, None, 1.0, now, 0, lease=rng.randint(2, 20))
            b.add_ask(ask)
        b.expire(now)
        for g in b.grant_ready(now):
            needs[g.grant_id] = {k: (g.lease_units or v) for k, v in g.ask.needs.items()}
            if REQ in g.ask.needs:  # its pass's pacing schedule (meta) covers it
                paced[g.grant_id] = b.rate(REQ).tat
            granted.append(g)
            if g.ask.slot_limit is not None:
                slotted[g.grant_id] = (g.ask.site_id, g.ask.request_id, 10**9)
        for g in rng.sample(granted, min(len(granted), rng.randint(0, 3))):
            roll = rng.random()
            if g.lease_units:  # the lease ended: the units not taken go back
                b.end_lease(IMG, g.grant_id, rng.randint(0, g.lease_units))
            elif roll < 0.6:  # answered: counted from when it reached the provider
                for budget, amount in needs[g.grant_id].items():
                    b.settle(budget, g.grant_id, amount * rng.uniform(0.3, 1.0), g.granted_at + rng.uniform(-0.4, 0.45))
            else:  # sent late
                b.late(now, g.grant_id, needs[g.grant_id], g.granted_at + rng.uniform(0.6, 2.5))
            if rng.random() < 0.3 and g.grant_id in slotted:
                b.release_slot(g.ask.site_id, g.ask.request_id)
                site, request, released = slotted[g.grant_id]
                slotted[g.grant_id] = (site, request, min(released, len(ends)))
        if rng.random() < 0.15:  # the provider's answers decided how it counts unused tokens (tokens.py)
            b.rate(TOK).count_unused(rng.choice([True, False, None]))
        if rng.random() < 0.1:  # it counts more than our book: the difference is a correction entry
            tokens = b.rate(TOK)
            b.feedback(now, REQ, throttled=False, limit=None, remaining=None, tokens_budget=TOK, tokens_limit=60_000,
                       tokens_remaining=int(60_000 - tokens.used(now) - rng.randint(1, 3_000)), seen_at=now)
        offset += 1
        attempts.append((len(log), now))
        writes = pass_writes(pending, b.take_dirty(), offset)
        if rng.random() < 0.25:  # the broker took some of it and never acked: kept for the next pass
            log.extend(list(writes.items())[: rng.randint(0, len(writes))])
            pending = writes
            continue
        log.extend(writes.items())
        pending = {}
        b.persisted()
        ends.append(len(log))
        after.append({(name, grant_id): entry[0] + rate.span
                      for name, rate in b.rates.items() for grant_id, entry in rate.index.items()})
    return log, ends, attempts, after, needs, slotted, paced


def _check_takeover_at(at: int, last: int, log, attempts, after, needs, slotted, paced) -> None:
    # Entries of the last acked pass that the cut attempt kept: those still in their window when
    # it started (it only expires old ones, and a late report may bring one back: the events of
    # every attempt since the last acked pass are read again after the takeover).
    cut_at = max(now for first, now in attempts if first <= at)
    kept = {key for key, leaves in (after[last - 1] if last else {}).items() if leaves > cut_at} & set(after[last])
    restored = restored_book(log[:at], _book)
    check_restored(restored, at, last, kept, needs, slotted)
    requests = restored.rate(REQ)  # a grant restored without the schedule that made room for it: a burst
    behind = [(e[2], paced[e[2]]) for e in requests.entries if paced.get(e[2], -1e18) > requests.tat]
    assert not behind, f"the restored schedule {requests.tat} is behind its grants {behind[:3]}"
    tokens = restored.rate(TOK)
    for entry in tokens.entries:  # never less than the restored hypothesis of how the provider counts
        assert entry[1] >= provider_count_of(entry, tokens.semantics.refunds), (entry, tokens.semantics.refunds)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), passes=st.integers(2, 30), cut=st.floats(0.0, 1.0))
def test_a_takeover_after_failed_passes_loses_no_grant_and_answers_only_whole_ones(seed, passes, cut):
    log, ends, attempts, after, needs, slotted, paced = _run(seed, passes)
    last = max(0, min(passes - 1, int(cut * passes)))  # the acked pass whose attempts were being written
    for at in range(ends[last - 1] if last else 0, ends[last] + 1):  # killed at any record of its attempts
        _check_takeover_at(at, last, log, attempts, after, needs, slotted, paced)
