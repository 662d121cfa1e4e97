"""store/sites.py: the sites registry, Site's masked repr and SiteCache."""
from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, strategies as st

from store.database import Database
from store.sites import Site, SiteCache

from .conftest import aio, uid


# --- sites -------------------------------------------------------------------------------------------


@aio
async def test_sites_registry(db: Database) -> None:
    sid = uid("site")
    assert await db.get_site(sid) is None
    assert await db.update_site_controls(sid, paused=True) is None
    site = Site(sid, name="Tea blog", wix_api_key="wix-secret-1", wix_member_id="m1", weight=2.5)
    await db.upsert_site(site)
    assert await db.get_site(sid) == site

    updated = await db.update_site_controls(sid, paused=True, max_in_flight=3)
    assert updated == Site(sid, "Tea blog", "wix-secret-1", "m1", 2.5, 3, 1000, True)
    assert await db.get_site(sid) == updated
    updated = await db.update_site_controls(sid, weight=0.5)  # other controls untouched
    assert (updated.weight, updated.max_in_flight, updated.paused) == (0.5, 3, True)

    await db.upsert_site(Site(sid, name="Renamed", wix_api_key="wix-secret-2"))
    assert (await db.get_site(sid)).name == "Renamed"
    assert sid in [s.site_id for s in await db.list_sites()]
    with pytest.raises(ValueError):
        await db.update_site_controls(sid, weight=0)
    with pytest.raises(ValueError):
        await db.upsert_site(Site(sid, max_queued=0))

    # The bulk queue's limit is a control of its own: set, read back, and the others untouched.
    updated = await db.update_site_controls(sid, max_queued_bulk=250_000)
    assert (updated.max_queued_bulk, updated.max_queued) == (250_000, 1000)
    assert (await db.get_site(sid)).max_queued_bulk == 250_000
    for wrong in (0, 1_000_001):
        with pytest.raises(ValueError):
            await db.update_site_controls(sid, max_queued_bulk=wrong)


def test_site_repr_hides_the_key() -> None:
    site = Site("s1", name="n", wix_api_key="wix-very-secret-key")
    for text in (repr(site), str(site), f"{site}", repr([site]), repr({"s": site})):
        assert "wix-very-secret-key" not in text
        assert "wix_api_key='***'" in text
    assert "wix_api_key=''" in repr(Site("s2"))


@aio
async def test_site_cache_ttl(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    sid = uid("site")
    await db.upsert_site(Site(sid, name="v1"))
    clock = [1000.0]
    reads: list[str] = []
    real_get_site = db.get_site

    async def counting_get_site(site_id: str) -> Site | None:
        reads.append(site_id)
        await asyncio.sleep(0.01)  # let concurrent callers pile up on one load
        return await real_get_site(site_id)

    monkeypatch.setattr(db, "get_site", counting_get_site)
    cache = SiteCache(db, ttl=2.0, clock=lambda: clock[0])

    # concurrent misses share one query
    sites = await asyncio.gather(*(cache.get(sid) for _ in range(10)))
    assert {s.name for s in sites} == {"v1"} and len(reads) == 1

    await real_get_site(sid)
    await db.update_site_controls(sid, paused=True)
    clock[0] += 1.9
    assert (await cache.get(sid)).paused is False and len(reads) == 1  # within ttl: cached, no query
    clock[0] += 0.2
    assert (await cache.get(sid)).paused is True and len(reads) == 2  # expired: re-read

    missing = uid("site")
    assert await cache.get(missing) is None and await cache.get(missing) is None
    assert reads.count(missing) == 1  # unknown sites are cached too

    await db.update_site_controls(sid, paused=False)
    cache.invalidate(sid)
    assert (await cache.get(sid)).paused is False and len(reads) == 4


@aio
async def test_site_cache_error_is_not_cached(db: Database) -> None:
    class Flaky:
        calls = 0

        async def get_site(self, site_id: str) -> Site | None:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise ConnectionError("db down")
            return Site(site_id)

    cache = SiteCache(Flaky(), ttl=2.0)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        await cache.get("s")
    assert (await cache.get("s")) == Site("s")


@aio
async def test_site_cache_filled_from_a_read_of_every_site_asks_for_none_of_them() -> None:
    class Counting:
        reads: list[str] = []

        async def get_site(self, site_id: str) -> Site | None:
            Counting.reads.append(site_id)
            return Site(site_id, name="read alone")

    clock = [1000.0]
    cache = SiteCache(Counting(), ttl=3.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    started = cache.read_started()
    clock[0] += 0.5  # the read of every site took a while
    cache.fill({s: Site(s, name="listed") for s in "ab"}, started)
    assert [(await cache.get(s)).name for s in "ab"] == ["listed", "listed"] and Counting.reads == []
    clock[0] += 2.6  # the TTL counts from the start of the read
    assert (await cache.get("a")).name == "read alone" and Counting.reads == ["a"]

    started = cache.read_started()
    cache.invalidate("b")  # a change made here while the list was read: the list may predate it
    cache.fill({"b": Site("b", name="stale")}, started)
    assert (await cache.get("b")).name == "read alone"


@aio
async def test_the_sites_changed_since_a_read_include_a_change_made_by_hand(db: Database) -> None:
    """A worker reads only the sites changed since its last read: any update moves updated_at (a trigger),
    also one in SQL that does not set it."""
    kept, touched = uid("site"), uid("site")
    for sid in (kept, touched):
        await db.upsert_site(Site(sid, name=sid))
    every, at = await db.sites_changed(None)
    assert {kept, touched} <= {s.site_id for s in every}
    assert not {kept, touched} & {s.site_id for s in (await db.sites_changed(at))[0]}
    await db.pool.execute("UPDATE sites SET paused = true WHERE site_id = $1", touched)
    changed = {s.site_id: s for s in (await db.sites_changed(at))[0]}
    assert touched in changed and changed[touched].paused and kept not in changed


# --- a read of every site, kept as given --------------------------------------------------------

class Versions:
    """A sites table whose rows carry a version: what the cache serves is checked against it."""

    def __init__(self) -> None:
        self.version: dict[str, int] = {s: 0 for s in "abc"}
        self.reads: list[str] = []

    async def get_site(self, site_id: str) -> Site | None:
        self.reads.append(site_id)
        return Site(site_id, name=str(self.version[site_id]))

    def listed(self) -> dict[str, Site]:
        return {s: Site(s, name=str(v)) for s, v in self.version.items()}


operations = st.lists(st.one_of(
    st.tuples(st.just("get"), st.sampled_from("abc")),
    st.tuples(st.just("change"), st.sampled_from("abc")),  # as the site controls API does: change, invalidate
    st.tuples(st.just("refresh"), st.sampled_from([None, "a", "b", "c"])),  # a change made during the read, or none
    st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=4.0)),
), max_size=40)


@given(operations)
def test_a_site_changed_here_is_never_served_as_it_was(ops) -> None:
    async def run() -> None:
        table, clock = Versions(), [1000.0]
        cache = SiteCache(table, ttl=3.0, clock=lambda: clock[0])  # type: ignore[arg-type]
        for op, arg in ops:
            if op == "get":
                assert (await cache.get(arg)).name == str(table.version[arg])
            elif op == "change":
                table.version[arg] += 1
                cache.invalidate(arg)
            elif op == "refresh":  # Deps.refresh: invalidate all, read every site, fill
                cache.invalidate()
                started, listed = cache.read_started(), table.listed()
                if arg is not None:
                    table.version[arg] += 1
                    cache.invalidate(arg)
                cache.fill(listed, started)
            else:
                clock[0] += arg

    asyncio.run(run())


@aio
async def test_a_site_invalidated_after_the_list_is_read_alone_and_the_others_are_not() -> None:
    table, clock = Versions(), [1000.0]
    cache = SiteCache(table, ttl=3.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    cache.fill(table.listed(), cache.read_started())
    table.version["a"] += 1
    cache.invalidate("a")
    assert [(await cache.get(s)).name for s in "abc"] == ["1", "0", "0"] and table.reads == ["a"]
    assert (await cache.get("a")).name == "1" and table.reads == ["a"]  # read alone once, then cached
    clock[0] += 3.0
    assert (await cache.get("b")).name == "0" and table.reads == ["a", "b"]  # the list is as old as its TTL


def test_a_control_out_of_its_range_is_told_its_range_in_plain_numbers() -> None:
    from store.sites import control_problem

    assert control_problem("max_queued_bulk", 0) == "must be from 1 to 1000000"  # not "1e+06"
    assert control_problem("max_queued_bulk", 2.5) == "must be a whole number from 1 to 1000000"
    assert control_problem("weight", 1000) == "must be from 0.01 to 100"
    assert control_problem("max_queued_bulk", 1_000_000) is None
