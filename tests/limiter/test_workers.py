"""Unit tests of streams.limiter.workers and the book's use of it: a gone worker's site slots go back.

`make chaos` found the defect: a worker SIGKILLed with 14 of a big site's 20 slots
held them for an hour (the slots' own lease), because the partition's next owner
reached those requests only after the site's others; the site ran at 6 of 20.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from streams.limiter.book import Ask, BudgetBook
from streams.limiter.workers import ALIVE_EVERY, GONE_AFTER, HEARING_GAP, WorkerRoll

REQ = "openai_requests"


def book(slots: int = 2) -> BudgetBook:
    b = BudgetBook({REQ: {"limit": 10_000, "window": 10.0}}, grace=0.3, slot_default=slots)
    b.instance = "t-"
    return b


def ask(request_id: str, worker: str, now: float, site: str = "s", slot_limit: int | None = 2) -> Ask:
    return Ask(f"{request_id}-{worker}-{now}", site, request_id, {REQ: 1}, slot_limit, 1.0, now, 0, worker=worker)


def came(b: BudgetBook, a: Ask) -> None:
    """What the coordinator does with an ask (Coordinator.handle)."""
    b.workers.heard(a.arrived_at)
    b.saw(a, a.arrived_at)
    b.add_ask(a)


def alive(b: BudgetBook, worker: str, now: float) -> None:
    b.workers.heard(now)
    b.workers.saw(worker, now)


def test_a_silent_workers_slots_are_released_and_the_site_gets_them_back():
    b = book(slots=2)
    came(b, ask("r1", "dead", 0.0))
    came(b, ask("r2", "dead", 0.0))
    assert len(b.grant_ready(0.0)) == 2
    came(b, ask("r3", "live", 1.0))
    assert b.grant_ready(1.0) == []  # the site's two slots are held
    t = 1.0
    while t < GONE_AFTER + 2 * ALIVE_EVERY:  # only "live" is heard from
        t += ALIVE_EVERY
        alive(b, "live", t)
        released = b.expire(t)
        if t - 0.0 <= GONE_AFTER:
            assert released == {} and len(b.slot("s").holders) == 2
    assert b.slot("s").holders == {}
    assert "dead" not in b.workers.seen
    assert [g.ask.request_id for g in b.grant_ready(t)] == ["r3"]
    assert b.slot("s").owners == {"r3": "live"}


def test_the_expire_names_the_gone_worker_with_the_slots_it_held():
    b = book(slots=5)
    for rid in ("r1", "r2", "r3"):
        came(b, ask(rid, "dead", 0.0, slot_limit=5))
    came(b, ask("x1", "dead", 0.0, site="other"))
    b.grant_ready(0.0)
    b.take_dirty()
    for t in range(5, int(GONE_AFTER) + 5, 5):
        alive(b, "live", float(t))
    assert b.expire(GONE_AFTER + 1) == {"dead": [4, 0]}
    dirty = b.take_dirty()  # persisted with the next write
    assert dirty["slots:s"]["holders"] == {} and dirty["slots:other"]["holders"] == {}
    assert b.expire(GONE_AFTER + 2) == {}  # named once


def test_the_slot_follows_its_request_to_the_worker_that_asks_next():
    """generate on one worker, image and publish on others: the slot is theirs as the request moves."""
    b = book(slots=2)
    came(b, ask("r1", "generate-worker", 0.0))
    b.grant_ready(0.0)
    came(b, ask("r1", "image-worker", 5.0, slot_limit=None))  # a later stage asks without a slot limit
    assert b.slot("s").owners == {"r1": "image-worker"}
    for t in range(10, 60, 5):  # the generate worker died; the image worker lives on
        alive(b, "image-worker", float(t))
        b.expire(float(t))
    assert b.slot("s").holders.keys() == {"r1"}


def test_nobody_is_gone_while_the_coordinator_hears_nobody():
    """The broker away for 72 s (make chaos): every worker silent at once is our silence, not their deaths."""
    b = book(slots=2)
    came(b, ask("r1", "w1", 0.0))
    b.grant_ready(0.0)
    assert b.expire(80.0) == {}  # nothing heard for 80 s
    alive(b, "w2", 80.0)  # hearing again: w1 gets GONE_AFTER from now
    assert b.expire(80.0 + GONE_AFTER - 1) == {}
    alive(b, "w1", 80.0 + ALIVE_EVERY)
    alive(b, "w2", 80.0 + GONE_AFTER + 1)
    assert b.expire(80.0 + GONE_AFTER + 1) == {}
    assert b.slot("s").holders.keys() == {"r1"}


def test_a_takeover_keeps_the_owners_and_gives_them_time_to_be_heard():
    b = book(slots=2)
    came(b, ask("r1", "w1", 0.0))
    came(b, ask("r2", "w2", 0.0))
    b.grant_ready(0.0)
    state = b.take_dirty()
    assert state["slots:s"]["owners"] == {"r1": "w1", "r2": "w2"}
    after = book(slots=2)  # the next coordinator, from the table
    after.restore(state.items())
    assert after.slot("s").owners == {"r1": "w1", "r2": "w2"}
    assert after.expire(1000.0) == {}  # heard nothing yet: nobody is told gone
    alive(after, "w2", 1000.0)
    for t in (1010.0, 1020.0, 1030.0):
        alive(after, "w2", t)
        assert after.expire(t) == {}
    alive(after, "w2", 1000.0 + GONE_AFTER + 1)
    assert after.expire(1000.0 + GONE_AFTER + 1) == {"w1": [1, 0]}
    assert after.slot("s").holders.keys() == {"r2"}


def test_a_worker_restarted_under_its_name_is_gone_at_once_even_while_nobody_else_is_heard():
    roll = WorkerRoll()
    roll.heard(0.0)
    roll.saw("w1-old", 0.0, "app-reply-host-6066")
    roll.saw("w2", 0.0, "app-reply-host-6067")
    assert roll.gone(1.0) == set()
    roll.heard(100.0)  # after a silence (a hearing gap): silence alone names nobody
    roll.saw("w1-new", 100.0, "app-reply-host-6066")  # the restarted process, from the same address
    assert roll.gone(100.0) == {"w1-old"}
    assert roll.gone(101.0) == set() and set(roll.seen) == {"w1-new", "w2"}


def test_a_gone_workers_waiting_asks_are_dropped_and_a_live_ones_stay():
    b = book(slots=1)
    came(b, ask("r1", "w1", 0.0, slot_limit=1))
    b.grant_ready(0.0)  # r1 holds the site's only slot
    for n in range(5):
        came(b, ask(f"d{n}", "dead", 0.0, slot_limit=1))  # waiting for the slot
    came(b, ask("l1", "live", 0.0, slot_limit=1))
    b.grant_ready(0.0)
    assert len(b.waiting) == 6
    for t in range(5, int(GONE_AFTER) + 10, 5):
        alive(b, "live", float(t))
        alive(b, "w1", float(t))
    assert b.expire(GONE_AFTER + 5) == {"dead": [0, 5]}
    assert [a.request_id for a in b.waiting.values()] == ["l1"]
    assert b.sizes()["budgets_waited_on"] == 1
    b.release_slot("s", "r1")
    assert [g.ask.request_id for g in b.grant_ready(GONE_AFTER + 6)] == ["l1"]
    assert b.sizes()["waiting"] == 0 and b.sizes()["budgets_waited_on"] == 0
    # Called gone by mistake (it was only cut off): its ask comes back with its next re-send.
    came(b, ask("d0", "dead", GONE_AFTER + 7, slot_limit=1))
    assert "d0" in [a.request_id for a in b.waiting.values()]


def test_slots_of_an_older_table_without_owners_keep_their_lease():
    b = book(slots=2)
    b.restore([("slots:s", {"holders": {"r1": 0.0}, "limit": 2})])
    alive(b, "w1", 100.0)
    alive(b, "w1", 200.0)
    assert b.expire(200.0) == {} and b.slot("s").holders.keys() == {"r1"}


@settings(max_examples=300, deadline=None)
@given(
    beats=st.lists(st.floats(min_value=0.5, max_value=ALIVE_EVERY), min_size=1, max_size=40),
    outages=st.lists(st.tuples(st.floats(min_value=0, max_value=300), st.floats(min_value=0, max_value=120)),
                     max_size=3),
    dies_at=st.one_of(st.none(), st.floats(min_value=0, max_value=300)),
    tick=st.floats(min_value=0.2, max_value=2.0),
)
def test_a_worker_is_called_gone_only_when_silent_and_always_once_dead(beats, outages, dies_at, tick):
    """Two workers beat at irregular intervals, at most ALIVE_EVERY apart; the coordinator hears nothing
    during outages (the broker away) and looks every `tick`. "w" may die. Whatever the timing: "w" is never
    called gone while it beats, and once dead it is called gone after others were heard GONE_AFTER more."""
    roll = WorkerRoll()
    deaf = [(start, start + length) for start, length in outages]
    events: list[tuple[float, str]] = []
    t = 0.0
    while t < 400:
        for gap in beats:
            t += gap
            events += [(t, "other"), (t + gap / 2, "w")]
    events = [(at, who) for at, who in sorted(events)
              if at <= 399 and not any(a <= at < b for a, b in deaf) and not (who == "w" and dies_at is not None and at >= dies_at)]
    gone_at, last_w, i, now = None, None, 0, 0.0
    while now <= 400:
        while i < len(events) and events[i][0] <= now:
            at, who = events[i]
            roll.heard(at)
            roll.saw(who, at)
            last_w = at if who == "w" else last_w
            i += 1
        if "w" in roll.gone(now):
            assert gone_at is None and dies_at is not None  # a beating worker is never gone, a dead one once
            assert now - (last_w if last_w is not None else 0.0) > GONE_AFTER
            gone_at = now
        now += tick
    if dies_at is not None and gone_at is None and last_w is not None:  # (never heard: it holds nothing)
        # Not gone yet: then others were never heard for GONE_AFTER on end after its death (outages cut it).
        others = [at for at, who in events if who == "other" and at >= dies_at]
        longest, run_start = 0.0, None
        for prev, at in zip([dies_at] + others, others):
            if at - prev > HEARING_GAP:  # a silence: heard afresh from here
                run_start = at
            elif run_start is None:
                run_start = prev
            longest = max(longest, at - run_start)
        assert longest <= GONE_AFTER + ALIVE_EVERY + tick, (beats, outages, dies_at, tick, last_w, events[-3:])


async def test_the_coordinator_learns_owners_from_asks_and_who_lives_from_alive_messages():
    import time

    from streams.limiter.coordinator import Coordinator

    c = Coordinator()
    c.active = c.loaded = True
    await c.handle({"op": "acquire", "worker": "w1", "ask_id": "a1", "site_id": "s", "request_id": "r1",
                    "needs": {REQ: 1}, "slot_limit": 2, "weight": 1.0}, None, 1)
    c.book.grant_ready(time.time())
    assert c.book.slot("s").owners == {"r1": "w1"}
    await c.handle({"op": "batch", "ops": [{"op": "alive", "worker": "w2"}, {"op": "alive"}]}, None, 2)
    assert set(c.book.workers.seen) == {"w1", "w2"}  # an alive message without a name counts nobody


async def test_every_ask_and_the_alive_message_name_this_worker_process(monkeypatch):
    from streams.limiter import alive
    from streams.limiter.client import Budgets

    budgets = Budgets()
    asked: list[dict] = []

    class Stop(Exception):
        pass

    async def answered(ask, deadline=None):
        asked.append(ask)
        raise Stop

    monkeypatch.setattr(budgets, "_ask_until_answered", answered)
    try:
        await budgets.acquire(site_id="s", request_id="r1", needs={REQ: 1}, slot_limit=20)
    except Stop:
        pass
    assert asked[0]["worker"] == budgets.instance and budgets.instance != Budgets().instance

    casts: list[dict] = []

    async def send(value):
        casts.append(value)

    monkeypatch.setattr(alive.budgets.casts, "send", send)
    await alive.say_alive()
    assert casts == [{"op": "alive", "worker": alive.budgets.instance, "route": alive.app.conf.reply_to}]


def test_a_request_a_later_stage_asked_for_keeps_its_slot_when_its_owner_is_gone():
    """Taken up again after generate, a request asks for no slot: releasing its slot would let the site
    run over its cap (a review found it), so only requests still at generate give theirs back."""
    b = book(slots=2)
    came(b, ask("at-generate", "dead", 0.0))
    came(b, ask("past-generate", "w0", 0.0))
    b.grant_ready(0.0)
    came(b, ask("past-generate", "dead", 1.0, slot_limit=None))  # its image stage, on the worker that dies
    assert b.slot("s").later == {"past-generate"}
    state = b.take_dirty()["slots:s"]
    assert state["later"] == ["past-generate"]
    for t in range(5, int(GONE_AFTER) + 10, 5):
        alive(b, "w0", float(t))
    assert b.expire(GONE_AFTER + 5) == {"dead": [1, 1]}  # one slot back; its image ask, never granted, dropped
    assert b.slot("s").holders.keys() == {"past-generate"}
    restored = book(slots=2)
    restored.restore([("slots:s", state)])
    assert restored.slot("s").later == {"past-generate"}
