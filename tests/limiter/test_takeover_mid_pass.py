"""A coordinator killed while a pass's writes are on their way: what the next owner restores.

A pass writes its changed table keys (a budget's grants of one second, a site's slots, ...)
to the one-partition changelog, in order, and answers nothing until every one is acked. A
coordinator killed in between leaves a prefix of that pass on the changelog. The next owner
restores it and reads blog.limiter again from the last pass that was written whole
(coordinator.READ_KEY), so the events of the cut pass come again. Whatever the cut:

- no grant a worker may hold is missing from any budget it uses (an entry moved to another
  second, on a settle or a late report, is in its old key or its new one);
- a grant the next owner would answer again (`granted_asks`: a re-ask of it gets the same
  grant) is counted in every budget it needs, so a worker never uses room the book lacks, and
  holds its site's slot (slots are written before the grants of a pass).
"""
from __future__ import annotations

import random
import time
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.coordinator import Coordinator
from streams.limiter.rates import RateBudget, bucket_of

REQ, TOK, IMG = "openai_requests", "openai_tokens", "replicate_requests"


def _book() -> BudgetBook:
    specs = {
        REQ: {"limit": 30, "window": 10.0, "paced": False},
        TOK: {"limit": 30_000, "window": 10.0},
        IMG: {"limit": 40, "window": 10.0, "paced": False},
    }
    b = BudgetBook(specs, grace=0.5, slot_default=5)
    b.instance = "old-"
    return b


def _entries(b: BudgetBook, now: float | None = None) -> set[tuple[str, str]]:
    """(budget, grant) of every entry; with `now`, of those still in their window then."""
    return {(name, grant_id) for name, rate in b.rates.items() for grant_id, entry in rate.index.items()
            if now is None or entry[0] + rate.span > now}


def _run(seed: int, passes: int) -> tuple[list[tuple[str, object]], list[int], list[tuple[set, set]], dict, dict]:
    """Passes of a coordinator: the changelog's records in order, where each pass ends, the
    (budget, grant) entries after each pass (all, and those still in their window at the next
    pass's start), every grant's needs by grant id, and the slots granted."""
    rng = random.Random(seed)
    b = _book()
    log: list[tuple[str, object]] = []
    ends: list[int] = []
    after: list[tuple[set, set]] = []
    needs: dict[str, dict] = {}
    granted: list = []
    slotted: dict[str, tuple[str, str, int]] = {}  # grant id -> (site, request, the pass that released it)
    now = 1_000.0
    n = 0
    steps = [rng.uniform(0.05, 1.6) for _ in range(passes + 1)]
    for p in range(passes):
        now += steps[p]
        for _ in range(rng.randint(0, 4)):
            n += 1
            if rng.random() < 0.6:
                a = Ask(f"a{n}", f"site{rng.randint(1, 4)}", f"r{n}", {REQ: 1.0, TOK: float(rng.randint(100, 900))},
                        5, 1.0, now, 0)
            else:
                a = Ask(f"a{n}", f"site{rng.randint(1, 4)}", f"r{n}", {IMG: 1.0}, None, 1.0, now, 0)
            b.add_ask(a)
        b.expire(now)
        for g in b.grant_ready(now):
            needs[g.grant_id] = dict(g.ask.needs)
            granted.append(g)
            if g.ask.slot_limit is not None:
                slotted[g.grant_id] = (g.ask.site_id, g.ask.request_id, passes)
        for g in rng.sample(granted, min(len(granted), rng.randint(0, 3))):
            if rng.random() < 0.6:  # answered: counted from when it reached the provider (an earlier second)
                for budget, amount in needs[g.grant_id].items():
                    b.settle(budget, g.grant_id, amount * rng.uniform(0.3, 1.0),
                             g.granted_at + rng.uniform(-0.4, 0.45))
            else:  # sent late: counted until it left later (a later second)
                b.late(now, g.grant_id, needs[g.grant_id], g.granted_at + rng.uniform(0.6, 2.5))
            if rng.random() < 0.3 and g.grant_id in slotted:
                b.release_slot(g.ask.site_id, g.ask.request_id)
                slotted[g.grant_id] = (*slotted[g.grant_id][:2], min(p, slotted[g.grant_id][2]))
        log.extend(b.take_dirty().items())
        b.persisted()  # acked: the next pass may start
        ends.append(len(log))
        after.append((_entries(b), _entries(b, now + steps[p + 1])))
    return log, ends, after, needs, slotted


def restored_book(records: list[tuple[str, object]], book: Callable[[], BudgetBook] = _book) -> BudgetBook:
    """A new owner's book (made by `book`) restored from these changelog records."""
    table: dict[str, object] = {}
    for key, value in records:  # the changelog's compacted view: the last value of each key
        table[key] = value
    b = book()
    b.instance = "new-"
    b.restore((k, v) for k, v in table.items() if v is not None)
    return b


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), passes=st.integers(2, 40), cut=st.floats(0.0, 1.0))
def test_a_takeover_at_any_record_of_a_pass_loses_no_grant_and_answers_only_whole_ones(seed, passes, cut):
    log, ends, after, needs, slotted = _run(seed, passes)
    last = max(0, min(passes - 1, int(cut * passes)))  # the pass being written when the coordinator died
    first_record = ends[last - 1] if last else 0
    at = first_record + int(cut * 997) % (ends[last] - first_record + 1)  # any record of it, or none, or all
    # Entries of the last pass written whole that the cut pass kept (it only expires old ones,
    # and a late report may bring one back: that report is read again after the takeover).
    kept = (after[last - 1][1] if last else set()) & after[last][0]
    check_restored(restored_book(log[:at]), at, last, kept, needs, slotted)


def check_restored(restored: BudgetBook, at: int, last: int, kept: set, needs, slotted) -> None:
    """What a book restored from the changelog's first `at` records holds, pass `last` being cut:
    every entry in `kept`, and whole grants with their slots."""
    held = _entries(restored)
    assert kept <= held, f"lost at record {at} of pass {last}: {sorted(kept - held)[:5]}"

    # What the next owner would answer again is whole: counted in every budget it needs.
    for ask_id, grant_id in ((a, answer["grant_id"]) for a, answer in restored.granted_asks().items()):
        missing = [budget for budget in needs[grant_id] if grant_id not in restored.rate(budget).index]
        assert not missing, f"{ask_id} ({grant_id}) would be answered again, but is not counted in {missing}"
        site, request, released = slotted.get(grant_id, ("", "", -1))
        if released > last:  # its slot is held still (or was, where the changelog was cut)
            assert request in restored.slot(site).holders, f"{ask_id} ({grant_id}) would run without its slot"


def test_a_moved_entry_is_in_its_old_buckets_key_too_until_the_pass_that_wrote_it_is_acked():
    r = RateBudget(TOK, 1_000, 10.0, 0.5)
    r.add(100.2, 50, "g", "a", "s")
    r.dirty.clear()
    assert r.extend(101.0, "g", 102.9, 50) == "extended"  # sent late: it counts from 102.4 now
    old, new = bucket_of(100.2), bucket_of(102.4)
    assert r.dirty == {old, new}
    assert [e[2] for e in r.bucket(new)] == ["g"]
    assert [e[0] for e in r.bucket(old)] == [102.4]  # its old bucket carries it, as it is now
    assert [e[0] for e in r.bucket(old)] == [102.4]  # and again if that pass failed and is written again
    r.dirty.clear()
    r.persisted()
    assert r.dirty == {old}  # the next pass writes the old bucket without it
    assert r.bucket(old) is None


def test_restoring_both_copies_of_a_moved_entry_counts_it_once_at_the_later_time_and_larger_amount():
    r = RateBudget(TOK, 1_000, 10.0, 0.5)
    r.restore_entries([[100.2, 80, "g", "a", "s", None, 80, None, 2], [102.4, 50, "g", "a", "s", None, 50, 50, 2]])
    assert len(r.entries) == 1 and r.total == 80 and r.entries[0][0] == 102.4


async def test_a_pass_tells_the_book_its_writes_are_acked_only_when_they_are(monkeypatch):
    c = Coordinator()
    c.active = c.loaded = True
    c.last_tick = time.time()
    acked: list[int] = []
    monkeypatch.setattr(c.book, "persisted", lambda: acked.append(1))
    c.pending_writes = {"k": 1}

    async def broker_away(writes):
        raise ConnectionError("broker away")

    monkeypatch.setattr(c, "_persist", broker_away)
    with pytest.raises(ConnectionError):
        await c.run_once()
    assert acked == [] and c.pending_writes == {"k": 1}

    async def broker_back(writes):
        return None

    monkeypatch.setattr(c, "_persist", broker_back)
    await c.run_once()
    assert acked == [1]


def test_keys_of_another_bucket_length_are_rewritten_in_todays_and_then_deleted_never_losing_an_entry():
    """A table written with one-second keys (before session 19), restored with tenth-of-a-second ones."""
    old = {1003: [[1003.25, 1, "g1", "a1", "s", None, 1, None], [1003.75, 1, "g2", "a2", "s", None, 1, None]]}
    b = _book()
    b.restore([(f"r|{REQ}|{second}", entries) for second, entries in old.items()])
    first = b.take_dirty()
    assert {k for k, v in first.items() if v} == {f"r|{REQ}|1003", f"r|{REQ}|{bucket_of(1003.25)}",
                                                  f"r|{REQ}|{bucket_of(1003.75)}"}
    assert sorted(e[2] for e in first[f"r|{REQ}|1003"]) == ["g1", "g2"]  # carried until this pass is acked
    b.persisted()
    assert b.take_dirty() == {f"r|{REQ}|1003": None}  # then deleted
    table = {**{f"r|{REQ}|1003": old[1003]}, **first}
    assert {e[2] for k, v in table.items() if v for e in v} == {"g1", "g2"}


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6), passes=st.integers(2, 30), cut=st.floats(0.0, 1.0), again=st.floats(0.0, 1.0),
       legacy=st.booleans())
def test_a_second_takeover_during_the_first_pass_after_a_restore_loses_no_entry(seed, passes, cut, again, legacy):
    """The table the first takeover left (copies of moved entries, or keys of one second each as before
    session 19): its owner's first pass rewrites those keys, and may itself be cut anywhere."""
    log, _, _, _, _ = _run(seed, passes)
    table: dict[str, object] = {}
    for key, value in log[: int(cut * len(log))]:
        table[key] = value
    if legacy:  # the same entries in one-second keys
        seconds: dict[str, list] = {}
        for key, value in list(table.items()):
            if key.startswith("r|") and not key.endswith("|meta"):
                del table[key]
                for e in value or ():
                    seconds.setdefault(f"{key.rsplit('|', 1)[0]}|{int(e[0])}", []).append(e)
        table.update(seconds)
    first = _book()
    first.restore((k, v) for k, v in table.items() if v is not None)
    held = _entries(first)
    writes = list(first.take_dirty().items())
    cut_table = {**table, **dict(writes[: int(again * (len(writes) + 1))])}
    second = restored_book(list(cut_table.items()))
    assert held <= _entries(second)
    first.persisted()
    table.update(writes)
    table.update(first.take_dirty())  # the keys that carried copies, written without them
    third = restored_book(list(table.items()))
    assert held <= _entries(third)
    assert all(bucket_of(e[0]) == int(k.rsplit("|", 1)[1]) for k, v in table.items()
               if v and k.startswith("r|") and not k.endswith("|meta") for e in v)  # every key canonical now
