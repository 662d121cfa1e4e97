"""What the stages need at run time, built once per worker process.

Connectors are created lazily on first use (inside the worker's event loop),
so importing the app (`faust -A streams ...`) does not touch the network.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import replace
from datetime import datetime, timedelta

from connectors.openai_writer import ArticleWriter
from store.costs import Costs
from store.database import SCHEMA_REVISIONS, Database, DatabaseError, SchemaBehind
from store.parked import ParkedEvents
from store.sites import Site, SiteCache
from connectors.replicate_images import ImageMaker
from connectors.wix_blog import WixBlog
from streams.limiter.client import budgets
from streams.log_limit import Backoff, LogLimit
from streams.pipeline import spend
from streams.pipeline.parking import ParkingLot
from streams.pipeline.runner import SitePolicy, StageRunner
from streams.settings import settings

log = logging.getLogger(__name__)

POLICY_REFRESH_SECONDS = 2.0
SITES_FULL_READ_SECONDS = 60.0
SITES_CHANGE_MARGIN = timedelta(seconds=30)  # a change's updated_at is its transaction's start: read back this far


class DatabaseUnavailable(DatabaseError):
    """Postgres cannot be reached (yet): nothing was kept of the attempt; try again later."""


class Deps:
    def __init__(self) -> None:
        self.worker_id = budgets.instance  # one name per process: in effect claims and in the limiter's log
        self._ready: asyncio.Lock | None = None
        self.db: Database | None = None
        self.sites: SiteCache | None = None
        self.writer: ArticleWriter | None = None
        self.images: ImageMaker | None = None
        self.wix: WixBlog | None = None
        self._policies: dict[str, SitePolicy] = {}
        self._policies_loaded = False
        self._paused_version = 0  # moves when a refresh finds a site newly paused or held (`paused_version`)
        self._site_rows: dict[str, Site] = {}  # every site as last read (`refresh`)
        self._sites_since: datetime | None = None  # read the sites changed from then on (None: every site)
        self._full_read_at = -math.inf
        self.parking: ParkingLot | None = None  # a paused site's events, in Postgres until it is resumed
        self.costs: Costs | None = None  # what paid calls cost, and the spend caps (streams/pipeline/spend.py)
        self._refresher: asyncio.Task | None = None
        # Connecting while Postgres is away: one attempt per back-off step, one log line per kind and interval.
        self._connect_backoff = Backoff(first=0.5, cap=15.0)
        self._connect_log = LogLimit(log, "database not reachable", interval=30.0)
        self._schema_log = LogLimit(log, "database not usable yet", interval=60.0)
        self._retry_at = 0.0
        self._last_error = ""

    async def ready(self) -> "Deps":
        """Connect once (the pool, then the connectors); raises DatabaseUnavailable while Postgres cannot be reached.

        A failed attempt keeps nothing, so calling again is always safe. Callers
        that come during the back-off after a failure (0.5 s doubling to 15 s)
        get that failure at once: hundreds of waiting events make one
        connection attempt per step, not one each.
        """
        if self.db is not None:
            return self
        if self._ready is None:
            self._ready = asyncio.Lock()
        async with self._ready:
            if self.db is None:
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    raise DatabaseUnavailable(f"{self._last_error} (next attempt in {wait:.1f} s)")
                db = Database(settings.database_url, min_size=1, max_size=10)
                try:
                    await db.start()
                    # A schema behind this code's (a release deployed before its migrations ran) would
                    # fail every request for good ("column ... does not exist"): it waits, as for an outage.
                    newer = await db.check_schema()
                except Exception as exc:
                    await db.close()
                    self._retry_at = time.monotonic() + self._connect_backoff.next()
                    behind = isinstance(exc, SchemaBehind)
                    self._last_error = str(exc) if behind else f"Postgres not reachable: {exc}"
                    (self._schema_log if behind else self._connect_log).failed(exc)
                    raise DatabaseUnavailable(self._last_error) from None
                self._connect_backoff.reset()
                self._connect_log.ok()
                self._schema_log.ok()
                if newer is not None:
                    log.warning("the database's schema is at revision %s, newer than this worker's (%s): used as it "
                                "is (migrations only add); upgrade this worker", newer, SCHEMA_REVISIONS[-1])
                # Filled by every refresh of the site controls (every two seconds); the extra second
                # keeps a site served from one refresh to the next, however long the read took.
                self.sites = SiteCache(db, ttl=POLICY_REFRESH_SECONDS + 1.0)
                self.writer = ArticleWriter(
                    base_url=settings.openai_base_url, api_key=settings.openai_api_key, model=settings.openai_model,
                    max_tokens=settings.openai_max_tokens, timeout=settings.openai_timeout,
                    max_connections=settings.stage_concurrency, store_completions=settings.openai_store_completions,
                )
                self.images = ImageMaker(
                    base_url=settings.replicate_base_url, api_token=settings.replicate_api_token,
                    model=settings.replicate_model, timeout=settings.replicate_timeout,
                    max_connections=settings.stage_concurrency,
                )
                self.wix = WixBlog(
                    base_url=settings.wix_base_url, timeout=settings.wix_timeout,
                    max_connections=settings.stage_concurrency,
                )
                self.parking = ParkingLot(ParkedEvents(db), on_unpaused=self._unpaused_here)
                self.costs = Costs(db)
                self.db = db
                self._refresher = asyncio.ensure_future(self._refresh_policies())
        return self

    async def site(self, site_id: str) -> Site | None:
        await self.ready()
        assert self.sites is not None
        return await self.sites.get(site_id)

    def policy(self, site_id: str) -> SitePolicy:
        """Sync view for the runners; refreshed every two seconds from `sites`."""
        return self._policies.get(site_id) or SitePolicy(max_in_flight=settings.site_max_in_flight)

    def paused_version(self) -> int:
        """Moves whenever a site may have become paused or held: the runners then look for it (StageRunner)."""
        return self._paused_version

    async def refresh(self, site_id: str | None = None) -> None:
        """Apply changed site controls on this worker now (others follow within 2 s)."""
        assert self.db is not None and self.sites is not None
        self.sites.invalidate(site_id)
        await spend.refresh(self.costs)  # spend caps: a raised cap or a new period releases a site
        started, now = self.sites.read_started(), time.monotonic()
        # The sites changed since the last read (thousands of sites every two seconds held the event loop),
        # and every site once a minute (a deleted site, a change that slipped through).
        full = self._sites_since is None or now - self._full_read_at >= SITES_FULL_READ_SECONDS
        changed, read_at = await self.db.sites_changed(None if full else self._sites_since)
        self._sites_since = read_at - SITES_CHANGE_MARGIN
        if full:
            self._full_read_at, self._site_rows, policies = now, {}, {}
        else:
            policies = self._policies
        newly_paused = False
        for n, s in enumerate(changed, 1):  # a site a spend cap holds is parked like a paused one
            self._site_rows[s.site_id] = s
            if s.held and not self.policy(s.site_id).paused:  # (self._policies is still the one before)
                newly_paused = True
            policies[s.site_id] = SitePolicy(weight=s.weight, max_in_flight=s.max_in_flight, paused=s.held)
            if n % 1000 == 0:
                await asyncio.sleep(0)  # let permits and events through meanwhile
        self._policies = policies
        if newly_paused:
            self._paused_version += 1
        self.sites.fill(self._site_rows, started)  # the stages' site look-ups need no query of their own
        self._policies_loaded = True
        if self.parking is not None:
            self.parking.release_due()  # resumed sites get their parked events back

    async def load_policies(self) -> None:
        """Read the site controls once (the runners wait for it before their first event); raises while it cannot."""
        if not self._policies_loaded:
            await self.ready()
            await self.refresh()

    async def park_events(self, stage: str, events: list) -> list[bool]:
        """The runners' `park`: store events of sites paused now; says which were stored."""
        await self.ready()
        assert self.parking is not None
        return await self.parking.park(stage, events)

    def hold_here(self, site_id: str) -> None:
        """A spend cap holds the site (streams/pipeline/spend.py): park its events from now on (the runners
        look for them at once: `paused_version`)."""
        if not self.policy(site_id).paused:
            self._paused_version += 1
        self._policies[site_id] = replace(self.policy(site_id), paused=True)

    def _unpaused_here(self, site_id: str) -> None:
        # The database says the site is not paused: this worker's copy was older.
        self._policies[site_id] = replace(self.policy(site_id), paused=False)

    async def _refresh_policies(self) -> None:
        # While the database is away the last known policies stay; tries back off to 30 s.
        backoff = Backoff(first=POLICY_REFRESH_SECONDS, cap=30.0)
        failures = LogLimit(log, "could not refresh site policies", interval=60.0)
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                failures.failed(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            failures.ok()
            await asyncio.sleep(POLICY_REFRESH_SECONDS)

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        for closer in (getattr(self.wix, "aclose", None), getattr(self.db, "close", None)):
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    pass


deps = Deps()
# The worker's runners park paused sites' events in Postgres and start nothing before the controls are read.
StageRunner.park = staticmethod(deps.park_events)
StageRunner.load_policies = staticmethod(deps.load_policies)

