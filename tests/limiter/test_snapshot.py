"""The limiter's figures are a snapshot the coordinator publishes once a second; readers never ask it.

Without Kafka: the coordinator's scheduler pass is driven by hand with a fake clock and
publisher; the worker-side reader with a fake Postgres read. The store's write and read
run against the test database when it is there.
"""
from __future__ import annotations

import asyncio
import math
import os
import types
import uuid

import pytest

from store.limiter_snapshot import LimiterSnapshot, read_snapshot, write_snapshot
from streams import metrics
from streams.limiter import client, coordinator as coordinator_module, published
from streams.limiter.coordinator import Coordinator
from streams.limiter.published import STATS_MAX_AGE_SECONDS, STATS_STALE_SECONDS, SnapshotReader, StatsUnavailable


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[dict] = []

    def publish(self, coordinator_id: str, figures: dict) -> None:
        self.published.append(figures)


async def test_the_coordinator_computes_and_publishes_its_figures_at_most_once_a_second(monkeypatch):
    publisher = FakePublisher()
    now = [1000.0]
    monkeypatch.setattr(coordinator_module, "publisher", publisher)
    monkeypatch.setattr(coordinator_module.time, "time", lambda: now[0])
    c = Coordinator()
    c.active = c.loaded = True
    c.last_tick = now[0]

    async def persisted(writes):
        return None

    monkeypatch.setattr(c, "_persist", persisted)
    computed = 0
    real_stats = c.stats

    def counting_stats(at):
        nonlocal computed
        computed += 1
        return real_stats(at)

    monkeypatch.setattr(c, "stats", counting_stats)
    for step in range(300):  # 300 passes over 3 s (a busy coordinator passes every few ms)
        now[0] = 1000.0 + step * 0.01
        await c.run_once()
    assert computed == len(publisher.published) == 2  # at 1001 and 1002
    assert publisher.published[-1]["at"] == pytest.approx(1002.0)
    # A worker of an older version asking for stats gets the snapshot: nothing is computed for it.
    sent = []

    async def send(reply, value):
        sent.append(value)

    monkeypatch.setattr(c, "_send", send)
    for _ in range(100):
        await c.handle({"op": "stats"}, {"Faust-Ag-ReplyTo": b"r", "Faust-Ag-CorrelationId": b"c"}, offset=None)
    assert computed == 2 and sent == [publisher.published[-1]] * 100


class FakeRead:
    """`read_snapshot` from memory, counting the queries."""

    def __init__(self, age: float = 0.2, figures: dict | None = None) -> None:
        self.snapshot: LimiterSnapshot | None = LimiterSnapshot(figures or {"slots": {"a": 1}}, "c1", age)
        self.queries = 0
        self.delay = 0.0
        self.fail: Exception | None = None

    async def __call__(self, pool, app_id):
        self.queries += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        return self.snapshot


@pytest.fixture
def fake_read(monkeypatch):
    read = FakeRead()

    class DB:
        pool = None

    async def database():
        return DB()

    monkeypatch.setattr(published, "read_snapshot", read)
    monkeypatch.setattr(published.publisher, "database", database)
    monkeypatch.setattr(client, "snapshots", SnapshotReader())
    return read


async def test_stats_come_from_the_snapshot_with_its_age_and_are_read_at_most_twice_a_second(fake_read):
    answers = await asyncio.gather(*(client.budgets.stats() for _ in range(500)))  # a flood of stats requests
    assert fake_read.queries == 1  # one query for all of them
    assert answers[0]["slots"] == {"a": 1} and answers[0]["stale"] is False
    assert answers[0]["snapshot_age_seconds"] >= 0.2
    await asyncio.sleep(published.STATS_CACHE_SECONDS + 0.05)
    again = await client.budgets.stats()
    assert fake_read.queries == 2 and again["snapshot_age_seconds"] >= 0.2


async def test_an_old_snapshot_is_stale_then_refused(fake_read):
    fake_read.snapshot = LimiterSnapshot({"slots": {}}, "c1", STATS_STALE_SECONDS + 1)
    assert (await client.budgets.stats())["stale"] is True
    client.snapshots._last = None
    fake_read.snapshot = LimiterSnapshot({"slots": {}}, "c1", STATS_MAX_AGE_SECONDS + 1)
    with pytest.raises(StatsUnavailable, match="s old"):
        await client.budgets.stats()
    assert (await client.budgets.stats(max_age=math.inf))["stale"] is True


async def test_no_snapshot_a_failing_or_slow_database_say_why(fake_read):
    fake_read.snapshot = None
    with pytest.raises(StatsUnavailable, match="no limiter coordinator has published"):
        await client.budgets.stats()
    fake_read.fail = OSError("connection refused")
    with pytest.raises(StatsUnavailable, match="could not be read"):
        await client.budgets.stats()
    fake_read.fail, fake_read.delay = None, 1.0
    fake_read.snapshot = LimiterSnapshot({}, "c1", 0.0)
    with pytest.raises(StatsUnavailable, match="did not answer within"):
        await client.budgets.stats(timeout=0.05)


DSN = os.environ.get(
    "BLOGSTREAM_TEST_DATABASE_URL",
    f"postgresql://blogstream:blogstream@127.0.0.1:{os.environ.get('PG_PORT', '55432')}/blogstream_test",
)


async def test_the_store_writes_one_row_per_deployment_and_measures_its_age_with_postgres_clock():
    import asyncpg

    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"test database not reachable: {exc}")
    app_id = f"snapshot-test-{uuid.uuid4().hex}"
    try:
        if not await conn.fetchval("SELECT to_regclass('limiter_snapshot') IS NOT NULL"):
            pytest.skip("blogstream_test is not migrated to head (alembic upgrade head)")
        assert await read_snapshot(conn, app_id) is None
        await write_snapshot(conn, app_id, "c1", {"slots": {"a": 2}, "at": 1.5})
        await write_snapshot(conn, app_id, "c2", {"slots": {"a": 3}, "at": 2.5})
        snapshot = await read_snapshot(conn, app_id)
        assert snapshot.figures == {"slots": {"a": 3}, "at": 2.5} and snapshot.coordinator == "c2"
        assert 0 <= snapshot.age_seconds < 5
        assert await conn.fetchval("SELECT count(*) FROM limiter_snapshot WHERE app_id = $1", app_id) == 1
        with pytest.raises(ValueError, match="NaN or infinity"):
            await write_snapshot(conn, app_id, "c3", {"factor": math.inf})
        assert (await read_snapshot(conn, app_id)).coordinator == "c2"
        # merge: the keys given replace theirs, the others stay (the same coordinator's per-site sections)
        await write_snapshot(conn, app_id, "c2", {"at": 3.5, "openai": {"used": 1}}, merge=True)
        assert (await read_snapshot(conn, app_id)).figures == {"slots": {"a": 3}, "at": 3.5, "openai": {"used": 1}}
        # ... but never another coordinator's
        await write_snapshot(conn, app_id, "c3", {"at": 4.5}, merge=True)
        snapshot = await read_snapshot(conn, app_id)
        assert snapshot.figures == {"at": 4.5} and snapshot.coordinator == "c3"
    finally:
        await conn.execute("DELETE FROM limiter_snapshot WHERE app_id = $1", app_id)
        await conn.close()


def test_per_site_budgets_are_one_series_of_their_kind_in_the_coordinators_metrics():
    """1,000 sites' Wix budgets would be 1,000 series per metric; they are one, `wix_requests`."""
    c = Coordinator()
    for n in range(50):
        c.book.rate(f"wix_requests:site-{n}")
    c.book.rate("wix_requests:site-7").factor = 0.7
    c.book.rate("wix_requests:site-9").external = 40.0
    c._publish_shares()
    labels = {sample.labels["budget"] for metric in metrics.budget_factor.collect() for sample in metric.samples}
    assert not any(":" in label for label in labels) and "wix_requests" in labels
    assert metrics.budget_factor.labels("wix_requests")._value.get() == pytest.approx(0.7)  # the smallest share
    assert metrics.budget_external.labels("wix_requests")._value.get() == 40.0  # the largest outside use
    assert metrics.budget_label("wix_requests:site-7") == "wix_requests"
    assert metrics.budget_label("openai_tokens") == "openai_tokens"


def test_the_per_site_figures_are_worked_out_for_about_a_thousand_sites_a_second():
    """Few sites: every call. 3,000 per-site budgets and slots: every 3 s, the global figures still each call."""
    c = Coordinator()
    for n in range(10):
        c.book.rate(f"wix_requests:site-{n}")
    first = c.stats(1000.0)
    assert first["sites_at"] == 1000.0 and len(first["wix"]) == 10
    assert c.stats(1000.1)["sites_at"] == 1000.1  # few: worked out every time
    c = Coordinator()
    for n in range(3_000):
        c.book.rate(f"wix_requests:site-{n}")
    times = [1000.0, 1001.0, 1002.9, 1003.1, 1004.0, 1006.0, 1006.2]  # (3,000 and the 3 global budgets)
    at = [c.stats(now) for now in times]
    assert [s["sites_at"] for s in at] == [1000.0, 1000.0, 1000.0, 1003.1, 1003.1, 1003.1, 1006.2]
    assert all(len(s["wix"]) == 3_000 for s in at)
    assert [s["at"] for s in at] == times  # the global part: each call


async def test_the_publisher_writes_the_per_site_figures_only_when_they_are_new(monkeypatch):
    writes: list[tuple[dict, bool]] = []
    fail = [False]

    async def write(pool, app_id, coordinator_id, figures, *, merge=False):
        if fail[0]:
            raise OSError("postgres away")
        writes.append((figures, merge))

    async def database():
        return types.SimpleNamespace(pool=None)

    publisher = published.SnapshotPublisher()
    monkeypatch.setattr(published, "write_snapshot", write)
    monkeypatch.setattr(publisher, "database", database)

    async def publish(coordinator_id: str, figures: dict) -> None:
        publisher.publish(coordinator_id, figures)
        await publisher._task

    sites = {"wix": {"s1": {}}, "slots": {"s1": 2}, "sites_at": 1.0}
    await publish("c1", {"at": 1.0, **sites})
    await publish("c1", {"at": 2.0, **sites})
    assert writes == [({"at": 1.0, **sites}, False), ({"at": 2.0}, True)]
    fail[0] = True
    await publish("c1", {"at": 3.0, **sites, "sites_at": 3.0})  # new per-site figures, not written
    fail[0] = False
    await publish("c1", {"at": 4.0, **sites, "sites_at": 3.0})
    assert writes[-1] == ({"at": 4.0, **sites, "sites_at": 3.0}, False)  # so the next write has them
    await publish("c2", {"at": 5.0, **sites, "sites_at": 3.0})  # another coordinator: whole
    assert writes[-1] == ({"at": 5.0, **sites, "sites_at": 3.0}, False)
    await publish("c2", {"at": 6.0})  # figures without a per-site part: written as they are
    assert writes[-1] == ({"at": 6.0}, False)
