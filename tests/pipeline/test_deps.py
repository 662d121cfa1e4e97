"""streams/pipeline/deps.py: the site controls a worker reads every two seconds."""
from __future__ import annotations

import asyncio
import types
from datetime import datetime, timedelta, timezone

from store.sites import Site, SiteCache
from streams.pipeline import deps as deps_module
from streams.pipeline import spend


class SitesTable:
    """`sites_changed` as Postgres answers it: rows with the time they changed, and the clock."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, tzinfo=timezone.utc)
        self.rows: dict[str, tuple[datetime, Site]] = {}
        self.asked: list[datetime | None] = []

    def put(self, site: Site) -> None:
        self.rows[site.site_id] = (self.now, site)

    async def sites_changed(self, since):
        self.asked.append(since)
        return [s for at, s in self.rows.values() if since is None or at >= since], self.now

    async def get_site(self, site_id):
        raise AssertionError("filled by the refresh: no read of one site")


def deps_over(table: SitesTable, monkeypatch) -> tuple[deps_module.Deps, list[float]]:
    """A Deps reading `table`, on a clock the test moves (clock[0]), with no spend caps."""
    clock = [100.0]
    monkeypatch.setattr(deps_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    async def no_spend(costs):
        return None

    monkeypatch.setattr(spend, "refresh", no_spend)
    deps = deps_module.Deps()
    deps.db, deps.sites = table, SiteCache(table, ttl=3.0, clock=lambda: clock[0])
    return deps, clock


def test_a_refresh_reads_the_sites_changed_since_the_last_and_every_site_once_a_minute(monkeypatch):
    table = SitesTable()
    for n in range(3_000):
        table.put(Site(f"s{n}"))
    deps, clock = deps_over(table, monkeypatch)

    async def scenario() -> None:
        await deps.refresh()  # the first read: every site
        assert table.asked == [None] and len(deps._policies) == 3_000
        table.now += timedelta(seconds=2)
        clock[0] += 2
        table.put(Site("s7", paused=True, weight=3.0))
        await deps.refresh()
        assert table.asked[-1] == table.now - timedelta(seconds=2) - deps_module.SITES_CHANGE_MARGIN
        assert deps.policy("s7").paused and deps.policy("s7").weight == 3.0 and not deps.policy("s8").paused
        assert (await deps.sites.get("s8")).site_id == "s8"  # every site served from memory, not one read each
        del table.rows["s9"]
        clock[0] += deps_module.SITES_FULL_READ_SECONDS
        await deps.refresh()  # once a minute every site again: a deleted one goes
        assert table.asked[-1] is None and "s9" not in deps._policies and deps.policy("s7").paused

    asyncio.run(scenario())


def test_the_paused_version_moves_when_a_refresh_finds_a_site_newly_paused_or_held(monkeypatch):
    """The runners look at every site with a line only when this moves (StageRunner.paused_version)."""
    table = SitesTable()
    for n in range(5):
        table.put(Site(f"s{n}", paused=n == 4))
    deps, clock = deps_over(table, monkeypatch)

    async def refreshed(*sites: Site, full: bool = False) -> int:
        table.now += timedelta(seconds=2)
        clock[0] += deps_module.SITES_FULL_READ_SECONDS if full else 2
        for site in sites:
            table.put(site)
        before = deps.paused_version()
        await deps.refresh()
        return deps.paused_version() - before

    async def scenario() -> None:
        assert await refreshed() == 1  # the first read finds s4 paused
        assert await refreshed() == 0  # nothing changed
        assert await refreshed(Site("s1", weight=2.0)) == 0  # changed, not paused
        assert await refreshed(Site("s2", paused=True)) == 1
        assert await refreshed(Site("s3", budget_exhausted="day")) == 1  # held by a spend cap
        assert await refreshed(Site("s2", paused=True, weight=3.0)) == 0  # paused already
        assert await refreshed(full=True) == 0  # every site read again: none newly paused
        assert await refreshed(Site("s2")) == 0  # resumed: nothing for the runners to park
        assert await refreshed(Site("s2", paused=True)) == 1

    asyncio.run(scenario())


def test_a_site_this_worker_holds_for_its_spend_moves_the_paused_version_too(monkeypatch):
    """A paid call's cost reached the site's cap here (spend.py: `hold_here`), or a step found it held
    (SiteHeld): its events waiting in the runners are to be parked now, so they stop holding their
    partition's commit and the read-ahead. The version did not move, so the runners found the site only at
    their next full look (StageRunner.PARK_FULL_SCAN_SECONDS, 30 s), its waiting events unparked till then."""
    table = SitesTable()
    table.put(Site("s1"))
    deps, _ = deps_over(table, monkeypatch)

    async def scenario() -> None:
        await deps.refresh()
        before = deps.paused_version()
        deps.hold_here("s1")
        assert deps.policy("s1").paused and deps.paused_version() == before + 1

    asyncio.run(scenario())
