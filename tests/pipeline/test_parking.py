"""Pausing a site (issue: nothing one site does may stop anyone else's work).

- the runner (fake streams, no Kafka): a paused site's events are parked and
  acked, so its partitions' acks and the read-ahead move on; other sites flow;
  nothing starts before the site controls are read;
- store/parked.py on the real test database: only sites paused *now* are
  parked, a copy is parked once, a release hands events over oldest first and
  deletes them only after the hand-over, one release per site at a time, a
  cancel ends parked requests;
- both together: resuming sends the parked events back to the stream, in their
  order, and they run.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from store.database import Database
from store.parked import ParkedEvent, ParkedEvents, cancel_waiting
from streams.contract import encode
from streams.pipeline.parking import ParkingLot
from streams.pipeline.runner import SitePolicy, StageRunner

from tests.store.conftest import reachable_database

from .test_runner import TP, Recorder, run, settle, wait_until  # noqa: F401  (run: the fixture)


RUN = f"park{uuid.uuid4().hex[:8]}"
TOPIC = f"{RUN}.blog.requests"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list = field(default_factory=list)

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    message: Message

    @property
    def key(self) -> bytes:
        return self.message.key

    @property
    def value(self) -> bytes:
        return self.message.value

    @property
    def id(self) -> tuple[int, int]:
        return (self.message.partition, self.message.offset)


def request_bytes(site: str, n: int) -> tuple[str, bytes]:
    request_id = f"{RUN}-{site}-{n}"
    return request_id, encode("BlogRequest", {
        "request_id": request_id, "site_id": site, "topic": f"Care guide {n}", "keywords": ["care"],
        "language": "en", "tone": "friendly", "target_words": 300, "requested_at": int(time.time() * 1000),
        "audience": None,
    })


class Partitions:
    """The source topic: what the test feeds, and what a resume produces back (new offsets at the end)."""

    def __init__(self, stream: "FakeStream") -> None:
        self.stream = stream
        self.next_offset: dict[int, int] = defaultdict(int)
        self.partition_of: dict[str, int] = {}  # keyed by site: a site's records share a partition
        self.produced: list[Message] = []

    def append(self, partition: int, site: str, value: bytes, headers: list | None = None) -> Event:
        self.partition_of[site] = partition
        offset = self.next_offset[partition]
        self.next_offset[partition] += 1
        ev = Event(Message(TOPIC, partition, offset, site.encode(), value, headers or []))
        self.stream.queue.put_nowait(ev)
        return ev

    async def produce(self, topic, key, value, headers):  # ParkingLot's producer: keyed by site
        assert topic == TOPIC
        ev = self.append(self.partition_of[key.decode()], key.decode(), value, list(headers or []))
        self.produced.append(ev.message)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeStream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.acks: list[tuple[int, int]] = []

    def noack(self) -> "FakeStream":
        return self

    async def events(self):
        while True:
            yield await self.queue.get()

    async def ack(self, ev: Event) -> bool:
        self.acks.append(ev.id)
        return True

    def acked(self, partition: int) -> list[int]:
        return [offset for p, offset in self.acks if p == partition]


class FakeLot:
    """`park` as the worker's, in memory: stores events of sites paused in its 'database'."""

    def __init__(self, paused_in_db: set[str]) -> None:
        self.paused_in_db = paused_in_db
        self.parked: list[Event] = []
        self.fail_next = 0

    async def park(self, stage: str, events: list[Event]) -> list[bool]:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("Postgres is away")
        stored = [ev.key.decode() in self.paused_in_db for ev in events]
        self.parked += [ev for ev, ok in zip(events, stored) if ok]
        return stored


@dataclass
class Started:
    paused: set[str]  # this worker's view of the controls
    lot: FakeLot
    handler: Recorder
    stream: FakeStream
    source: Partitions
    runner: StageRunner


def start(run, paused: set[str], *, park=None, load_policies=None, policy_wait: float | None = None) -> Started:
    """A runner on a fake stream whose parking lot knows the sites in `paused` as paused in the database."""
    lot, handler, stream = FakeLot(set(paused)), Recorder(), FakeStream()
    runner = StageRunner("generate", handler, concurrency=50, read_ahead=10_000,
                         policy=lambda site: SitePolicy(paused=site in paused))
    runner.expected_start = lambda tp: None
    runner.rewind = None
    runner.STALL_CHECK_EVERY = 3600.0
    runner.park = park or lot.park
    runner.load_policies = load_policies
    if policy_wait is not None:
        runner.POLICY_WAIT_SECONDS = policy_wait
    run(runner, stream)
    return Started(paused, lot, handler, stream, Partitions(stream), runner)


# --------------------------------------------------------------------------- the runner


async def test_a_paused_sites_events_are_parked_and_acked_and_the_others_flow(run):
    t = start(run, {"held"})
    # The paused site's events come first on partition 0, the free site's behind them.
    for n in range(5):
        t.source.append(0, "held", f"held-{n}".encode())
    for n in range(5):
        t.source.append(0, "free", f"free-{n}".encode())

    await wait_until(lambda: t.stream.acked(0) == list(range(10)), "partition 0 acked past the paused site's events")
    assert t.handler.started_sites == ["free"] * 5
    assert [ev.value for ev in t.lot.parked] == [f"held-{n}".encode() for n in range(5)]  # in offset order
    assert t.runner._buffered == 0  # nothing held in the read-ahead


async def test_events_arriving_for_a_paused_site_later_are_parked_too(run):
    t = start(run, {"held"})
    t.source.append(0, "free", b"free-0")
    await wait_until(lambda: t.stream.acked(0) == [0], "the first event acked")
    for n in range(3):
        t.source.append(0, "held", f"held-{n}".encode())
    t.source.append(0, "free", b"free-1")
    await wait_until(lambda: t.stream.acked(0) == [0, 1, 2, 3, 4], "all acked")
    assert len(t.lot.parked) == 3 and t.handler.started_sites == ["free", "free"]


async def test_an_event_whose_site_the_database_says_is_not_paused_runs(run):
    held = {"held"}  # this worker's copy of the controls is older: the site was resumed meanwhile
    lot = FakeLot(paused_in_db=set())

    async def park_and_learn(stage, events):
        stored = await lot.park(stage, events)
        held.clear()  # what deps.Deps._unpaused_here does
        return stored

    t = start(run, held, park=park_and_learn)
    for n in range(3):
        t.source.append(0, "held", f"held-{n}".encode())
    await wait_until(lambda: t.stream.acked(0) == [0, 1, 2], "run and acked")
    assert lot.parked == [] and t.handler.started_sites == ["held"] * 3


async def test_when_parking_fails_the_events_wait_unacked_and_are_parked_later(run):
    t = start(run, {"held"})
    t.lot.fail_next = 1  # the runner tries again 2 s later
    for n in range(2):
        t.source.append(0, "held", f"held-{n}".encode())
    await settle()
    assert t.stream.acks == [] and t.lot.parked == []
    await wait_until(lambda: t.stream.acked(0) == [0, 1], "parked on the second try", timeout=10)
    assert len(t.lot.parked) == 2 and t.handler.started == []


async def test_nothing_starts_before_the_site_controls_are_read(run):
    loaded = asyncio.Event()

    async def load_policies():
        if not loaded.is_set():
            raise ConnectionRefusedError("Postgres is starting")

    t = start(run, set(), load_policies=load_policies)
    for n in range(3):
        t.source.append(0, "held", f"held-{n}".encode())
    t.source.append(1, "free", b"free-0")
    await asyncio.sleep(0.3)
    assert t.handler.started == [] and t.stream.acks == []  # held: the controls are not known yet

    t.paused.add("held")  # what the first read finds
    t.lot.paused_in_db.add("held")
    loaded.set()
    await wait_until(lambda: t.stream.acked(0) == [0, 1, 2] and t.stream.acked(1) == [0], "parked and run")
    assert t.handler.started_sites == ["free"] and len(t.lot.parked) == 3


async def test_the_wait_for_the_site_controls_is_bounded_and_says_why(run, caplog):
    async def load_policies():
        raise ConnectionRefusedError("Postgres is down")

    with caplog.at_level(logging.WARNING, logger="streams.pipeline.runner"):
        t = start(run, set(), load_policies=load_policies, policy_wait=0.5)
        t.source.append(0, "free", b"free-0")
        await wait_until(lambda: t.stream.acked(0) == [0], "started after the bound")
    lines = [r.getMessage() for r in caplog.records]
    assert any("holding events until the site controls are read" in line and "Postgres is down" in line for line in lines)
    assert any("starting events without them" in line for line in lines)


# --------------------------------------------------------------------------- the store (real Postgres)


@pytest_asyncio.fixture
async def db():
    async with reachable_database(max_size=6) as database:
        if not await database.pool.fetchval("SELECT to_regclass('parked_events') IS NOT NULL"):
            pytest.skip("parked_events missing: run alembic upgrade head on the test database")
        yield database
        await database.pool.execute("DELETE FROM parked_events WHERE site_id LIKE $1", f"{RUN}%")
        await database.pool.execute("DELETE FROM stage_outputs WHERE request_id LIKE $1", f"{RUN}%")
        await database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", f"{RUN}%")
        await database.pool.execute("DELETE FROM sites WHERE site_id LIKE $1", f"{RUN}%")


async def add_site(db: Database, *, paused: bool) -> str:
    site = f"{RUN}-{uuid.uuid4().hex[:6]}"
    await db.pool.execute("INSERT INTO sites (site_id, name, paused) VALUES ($1, $1, $2)", site, paused)
    return site


def parked(site: str, offset: int, *, request_id: str | None = None, stage: str = "generate") -> ParkedEvent:
    return ParkedEvent(site, stage, request_id, TOPIC, 3, offset, site.encode(), f"v{offset}".encode(),
                       [("trace", b"\x00\x01")])


async def test_only_sites_paused_now_are_parked_and_a_copy_once(db):
    store = ParkedEvents(db)
    held, free = await add_site(db, paused=True), await add_site(db, paused=False)
    assert await store.park([parked(held, 1), parked(free, 2), parked(held, 3)]) == {held}
    assert await store.park([parked(held, 1)]) == {held}  # a replayed copy: already there
    counts = await store.counts()
    assert counts.get(held) == 2 and free not in counts


async def test_a_release_hands_over_in_order_and_deletes_only_after_the_hand_over(db):
    store = ParkedEvents(db)
    site = await add_site(db, paused=True)
    await store.park([parked(site, n) for n in range(5)])
    assert site not in await store.due()  # still paused
    await db.update_site_controls(site, paused=False)
    assert site in await store.due()

    async def broker_down(events):
        raise OSError("the broker did not ack")

    with pytest.raises(OSError):
        await store.release(site, broker_down, batch=2)
    assert (await store.counts())[site] == 5  # nothing lost: sent again by the next release

    handed: list[ParkedEvent] = []

    async def send(events):
        handed.extend(events)

    assert await store.release(site, send, batch=2) == 5
    assert [e.offset for e in handed] == list(range(5))
    assert handed[0].value == b"v0" and handed[0].key == site.encode() and handed[0].headers == [("trace", b"\x00\x01")]
    assert site not in await store.counts()


async def test_one_release_per_site_at_a_time(db):
    store = ParkedEvents(db)
    site = await add_site(db, paused=True)
    await store.park([parked(site, n) for n in range(3)])
    await db.update_site_controls(site, paused=False)
    inside = asyncio.Event()
    go_on = asyncio.Event()

    async def slow(events):
        inside.set()
        await go_on.wait()

    first = asyncio.ensure_future(store.release(site, slow))
    await inside.wait()
    assert await store.release(site, slow) == 0  # another worker: the first one holds the site
    go_on.set()
    assert await first == 3


async def test_cancel_ends_parked_requests_at_any_stage_and_leaves_their_release_to_a_worker(db):
    store = ParkedEvents(db)
    site = await add_site(db, paused=True)
    queued, drafted = f"{site}-r1", f"{site}-r2"
    for request_id, stage, rank in ((queued, "requested", 0), (drafted, "drafted", 1)):
        await db.pool.execute(
            "INSERT INTO blog_generations (id, site_id, status, stage, stage_rank) VALUES ($1, $2, 'PENDING', $3, $4)",
            request_id, site, stage, rank)
    await store.park([parked(site, 1, request_id=queued), parked(site, 2, request_id=drafted, stage="image"),
                      parked(site, 3)])  # the last one did not decode: the stage will dead-letter it once back

    assert sorted(await cancel_waiting(db, site)) == sorted([queued, drafted])
    rows = {r["id"]: r for r in await db.pool.fetch("SELECT id, status FROM blog_generations WHERE site_id = $1", site)}
    assert {rid: r["status"] for rid, r in rows.items()} == {queued: "CANCELLED", drafted: "CANCELLED"}
    marker = await db.get_effect(queued, "generate")
    assert marker["cancelled"] is True  # a stray copy of the request ends CANCELLED too
    assert site in await store.due()  # cancelled events are released while the site stays paused

    handed: list[ParkedEvent] = []

    async def send(events):
        handed.extend(events)

    assert await store.release(site, send) == 2
    assert [(e.request_id, e.cancel_reason is not None) for e in handed] == [(queued, True), (drafted, True)]
    assert (await store.counts())[site] == 1  # the undecodable one waits for the resume


async def test_cancel_of_a_site_never_touches_a_request_id_of_another_site_its_parked_events_carry(db):
    """Site B, paused, gets a record produced straight to Kafka with site A's request id: it is parked
    before any stage asks whose the id is. Cancelling B must leave A's request alone: not CANCELLED,
    no cancelled `generate` effect of B's (A's own run, or its retry, would then find it foreign and be
    dead-lettered), and not reported as one of B's."""
    store = ParkedEvents(db)
    owner, other = await add_site(db, paused=False), await add_site(db, paused=True)
    queued, failed = f"{owner}-queued", f"{owner}-failed"
    await db.pool.execute(
        "INSERT INTO blog_generations (id, site_id, status, stage, stage_rank) VALUES ($1, $2, 'PENDING', 'requested', 0)",
        queued, owner)
    await db.pool.execute(
        "INSERT INTO blog_generations (id, site_id, status, stage, stage_rank, request, error) "
        "VALUES ($1, $2, 'FAILED', 'failed', 3, '{}'::jsonb, 'boom')", failed, owner)
    await store.park([parked(other, 1, request_id=queued), parked(other, 2, request_id=failed)])

    cancelled = await cancel_waiting(db, other)
    statuses = dict(await db.pool.fetch("SELECT id, status FROM blog_generations WHERE site_id = $1", owner))
    assert statuses == {queued: "PENDING", failed: "FAILED"}
    for request_id in (queued, failed):
        assert await db.get_effect(request_id, "generate") is None
        claim = await db.claim_effect(request_id, "generate", owner, owner="w:1", lease_seconds=30)
        assert claim.state == "acquired"  # the owner's run (or retry) goes on, not 'foreign'
    assert cancelled == []  # none of them was B's


async def test_cancel_of_a_site_before_an_id_has_any_row_leaves_the_id_with_one_owner(db):
    """Site B, paused, parks a record carrying request id X before any row for X exists (the sink has not
    written one yet), and B's parked work is cancelled. Then site A's request X arrives: the stage asks whose
    id X is (`request_owner`, which claims it for A when no row exists) and claims its `generate` effect.
    Both must name the same site: A owning the row while B's cancellation holds the effect left A's request
    PENDING for good (each run dead-lettered as another site's, its row never failed)."""
    owner_a, paused_b = await add_site(db, paused=False), await add_site(db, paused=True)
    early = f"{owner_a}-early"
    await ParkedEvents(db).park([parked(paused_b, 1, request_id=early)])

    cancelled = await cancel_waiting(db, paused_b)
    owner = await db.request_owner(early, owner_a)  # A's request X reaches a stage
    claim = await db.claim_effect(early, "generate", owner_a, owner="w:1", lease_seconds=30)
    assert (owner == owner_a) == (claim.state == "acquired")  # the row and the effect ledger agree
    # The cancel used the id first, as a stage would have: it is B's, ended CANCELLED; A is refused, not stuck.
    assert owner == paused_b and claim.state == "foreign" and cancelled == [early]
    row = await db.pool.fetchrow("SELECT site_id, status FROM blog_generations WHERE id = $1", early)
    assert (row["site_id"], row["status"]) == (paused_b, "CANCELLED")


# --------------------------------------------------------------------------- together


async def test_resume_sends_the_parked_events_back_in_order_and_they_run(db, run):
    store = ParkedEvents(db)
    site = await add_site(db, paused=True)
    paused_here = {site}
    lot = ParkingLot(store, on_unpaused=paused_here.discard)
    cancelled: list[str] = []

    async def report(stage, request_id, site_id, reason, retry=0):
        cancelled.append(request_id)

    lot.cancelled = report
    t = start(run, paused_here, park=lot.park)
    lot.produce = t.source.produce
    values = [request_bytes(site, n)[1] for n in range(6)]
    for n, value in enumerate(values):
        t.source.append(1, site, value, [("n", str(n).encode())])
    await wait_until(lambda: t.stream.acked(1) == list(range(6)), "parked and acked")
    assert t.handler.started == []

    await db.update_site_controls(site, paused=False)  # `blogstream sites resume`, straight in Postgres
    paused_here.discard(site)  # this worker's next refresh
    lot.release_due()
    await wait_until(lambda: len(t.handler.started) == 6, "the resumed events ran")
    produced = t.source.produced
    assert [m.value for m in produced] == values
    assert [m.headers for m in produced] == [[("n", str(n).encode())] for n in range(6)]
    assert [m.offset for m in produced] == list(range(6, 12))  # after the originals, in their order
    assert t.handler.started == [(1, offset) for offset in range(6, 12)]
    await lot._releasing  # deleted after the hand-over
    assert site not in await store.counts() and cancelled == []


def thousand_sites_looked_at_once(policy, asked: list[str], **runner_args):
    """A runner with a line for each of 1,000 sites, after its first look for paused ones (at every site)."""
    runner = StageRunner("generate", Recorder(), concurrency=50, read_ahead=10_000, policy=policy, **runner_args)
    lot = FakeLot(set())
    runner.park = lot.park
    offsets = iter(range(10**6))
    for n in range(1_000):
        runner.add(Event(Message(TOPIC, 0, next(offsets), f"s{n}".encode(), b"")))
    runner._park_paused()
    assert len(asked) == 1_000  # the first look is at every site
    asked.clear()
    return runner, lot, offsets


def test_with_a_paused_version_every_site_is_looked_at_only_when_it_moves(monkeypatch):
    """Deps.paused_version moves when a refresh finds a site newly paused: then (and every
    PARK_FULL_SCAN_SECONDS) the runner looks at every site with a line; else only at newcomers."""
    import types

    from streams.pipeline import runner as runner_module

    clock = [1000.0]
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    paused: set[str] = set()
    asked: list[str] = []
    version = [0]

    def policy(site: str) -> SitePolicy:
        asked.append(site)
        return SitePolicy(paused=site in paused)

    async def scenario() -> None:
        runner, lot, _ = thousand_sites_looked_at_once(policy, asked, paused_version=lambda: version[0])
        clock[0] += 10 * runner.PARK_SCAN_SECONDS
        runner._park_paused()
        assert asked == []  # the version did not move
        paused.add("s5")
        lot.paused_in_db.update(paused)
        version[0] += 1
        runner._park_paused()
        assert len(asked) == 1_000 and "s5" not in runner._lines
        assert [e.site_id for e in runner._parking] == ["s5"]
        asked.clear()
        paused.add("s6")  # paused without the version moving (it should not happen): found in the full scan
        lot.paused_in_db.update(paused)
        runner._park_paused()
        assert asked == [] and "s6" in runner._lines
        clock[0] += runner.PARK_FULL_SCAN_SECONDS
        runner._park_paused()
        assert "s6" not in runner._lines
        await asyncio.sleep(0)

    asyncio.run(scenario())


def test_paused_sites_are_found_without_asking_every_site_before_every_event(monkeypatch):
    """Before each event the runner looks only at the sites new in its ring; at every site twice a second.
    (It asked every site's policy before every event: O(sites) per event.) `_next` skips a paused site anyway."""
    import types

    from streams.pipeline import runner as runner_module

    clock = [1000.0]
    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    paused: set[str] = set()
    asked: list[str] = []

    def policy(site: str) -> SitePolicy:
        asked.append(site)
        return SitePolicy(paused=site in paused)

    async def scenario() -> None:
        runner, lot, offsets = thousand_sites_looked_at_once(policy, asked)
        for _ in range(100):
            runner._park_paused()
        assert asked == []
        paused.update({"s5", "new"})
        lot.paused_in_db.update(paused)
        runner.add(Event(Message(TOPIC, 0, next(offsets), b"new", b"")))
        runner._park_paused()
        assert asked == ["new"] and [e.site_id for e in runner._parking] == ["new"]
        assert all(runner._next().site_id != "s5" for _ in range(40))  # not parked yet, and not started
        clock[0] += runner.PARK_SCAN_SECONDS
        runner._park_paused()
        assert "s5" not in runner._lines and {e.site_id for e in runner._parking} >= {"s5"}
        await asyncio.sleep(0)

    asyncio.run(scenario())


async def test_a_cancelled_parked_event_ends_the_run_it_belongs_to():
    # A retry's request parked at generate and then cancelled: its CANCELLED result must say the retry's run, or
    # the sink would free the first run's slot and leave the retry's row PENDING (an earlier run's result).
    retried = {"request_id": "r-9", "site_id": "s-9", "topic": "Tea", "requested_at": 1_750_000_000_000, "retry": 3}
    reported: list[tuple[str, int]] = []

    async def report(stage, request_id, site_id, reason, retry=0):
        reported.append((request_id, retry))

    lot = ParkingLot(ParkedEvents(None), cancelled=report)
    parked = [ParkedEvent("s-9", "generate", "r-9", "t", 0, n, b"s-9", value, cancel_reason="cancelled")
              for n, value in enumerate([encode("BlogRequest", retried), encode("BlogRequest", retried | {"retry": 0}),
                                         b"not a record"])]
    await lot.send_back(parked)
    assert reported == [("r-9", 3), ("r-9", 0), ("r-9", 0)]
