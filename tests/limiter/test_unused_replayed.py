"""An `unused` record handled twice (BudgetBook.unused): the next owner replays the records after the last
`read_to` it recovered, and a pass cut after its meta key (the pacing schedule moved back) and before its
`read_to` leaves that record to be handled again, moving the schedule back once more.

That costs no safety: the window still caps every grant (RateBudget.fits), and a schedule moved back any
number of intervals grants at most the pacing slack's worth at once, as after an idle spell (RateBudget.add
starts the schedule again no earlier than now - slack). So it is not made idempotent.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.limiter.test_book import REQ, ask, book, max_in_window


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), unused_share=st.floats(0.0, 0.5), replays=st.integers(1, 4))
def test_unused_records_handled_again_never_let_a_provider_window_exceed_the_limit(seed, unused_share, replays):
    rng = random.Random(seed)
    limit, window, grace = 30, 10.0, 0.3
    b = book(limit, window, grace, paced=True)
    for i in range(400):
        b.add_ask(ask(f"site{i % 5}"))
    arrivals: list[float] = []
    records: list[tuple[float, str]] = []  # (when the coordinator handles it, grant id) of `unused` records
    now = 0.0
    while now < 120.0:
        due = sorted(r for r in records if r[0] <= now)
        records = [r for r in records if r[0] > now]
        for _, grant_id in due:
            b.unused(grant_id, {REQ: 1})
        for g in b.grant_ready(now):
            if rng.random() < unused_share:  # reached its worker too late: never sent
                at = now + rng.uniform(0.3, 5.0)
                # handled once, then again `replays - 1` times by owners replaying it after a takeover
                records += [(at + k * rng.uniform(0.0, 3.0), g.grant_id) for k in range(replays)]
            else:
                arrivals.append(g.granted_at + rng.uniform(0.0, grace))
        now += rng.uniform(0.001, 0.2)
    assert len(arrivals) > 150
    assert max_in_window(arrivals, window) <= limit


def test_a_schedule_moved_back_many_times_grants_no_more_at_once_than_after_an_idle_spell():
    limit, window, grace = 30, 10.0, 0.3
    b = book(limit, window, grace, paced=True)
    rate = b.rate(REQ)
    for i in range(5):
        b.add_ask(ask(f"site{i}"))
    grants, now = [], 0.0
    while len(grants) < 5:  # on the schedule, one grant per interval: the window far from full
        grants += b.grant_ready(now)
        now += 0.01
    for _ in range(50):  # one `unused` record handled 50 times: the schedule 50 intervals back
        b.unused(grants[-1].grant_id, {REQ: 1})
    for i in range(40):
        b.add_ask(ask(f"site{i % 5}"))
    burst = b.grant_ready(now)
    assert limit - rate.used(now) > 20  # the window would let 20 more through: the schedule's restart holds them
    assert len(burst) == int(rate.pace_slack() / rate.pace_interval()) + 1  # the burst after any idle spell
