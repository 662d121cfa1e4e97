"""The limiter's figures, published to Postgres by its coordinator and read by every worker's stats pages.

The coordinator writes a snapshot of every budget once a second (`SnapshotPublisher`);
a worker answering a stats page reads it (`SnapshotReader`), at most once per
STATS_CACHE_SECONDS however many pages ask at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

from store.database import Database
from store.limiter_snapshot import LimiterSnapshot, read_snapshot, write_snapshot
from streams.settings import settings

__all__ = [
    "SITE_SECTIONS", "STATS_MAX_AGE_SECONDS", "STATS_STALE_SECONDS", "SnapshotPublisher", "SnapshotReader", "StatsUnavailable",
    "publisher", "snapshots",
]

log = logging.getLogger(__name__)

# A coordinator's per-site figures (Coordinator._site_figures): written only when worked out anew.
SITE_SECTIONS = ("wix", "slots", "sites_at")
# The coordinator publishes its figures every second (coordinator.SnapshotPublisher). Older than
# STALE they are shown with "stale": true; older than MAX_AGE the stats pages answer 503.
STATS_STALE_SECONDS = 5.0
STATS_MAX_AGE_SECONDS = 30.0
STATS_CACHE_SECONDS = 0.5  # a worker reads the snapshot at most twice a second, however many ask


class StatsUnavailable(Exception):
    """The limiter's figures cannot be shown: the message says why and what to do."""


class SnapshotReader:
    """The published snapshot, read from Postgres at most once per STATS_CACHE_SECONDS per worker.

    Concurrent readers share one query; the age grows with the time since the read.
    """

    def __init__(self) -> None:
        self._last: tuple[float, LimiterSnapshot] | None = None  # (monotonic time of the read, snapshot)
        self._reading: asyncio.Future | None = None

    async def read(self, timeout: float) -> LimiterSnapshot:
        last = self._last
        if last is not None and time.monotonic() - last[0] < STATS_CACHE_SECONDS:
            return self._aged(last)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._fetch())
            self._reading.add_done_callback(lambda f: f.cancelled() or f.exception())  # seen even if all gave up
        try:
            return self._aged(await asyncio.wait_for(asyncio.shield(self._reading), timeout))
        except StatsUnavailable:
            raise
        except asyncio.TimeoutError:
            raise StatsUnavailable(f"Postgres did not answer within {timeout:g} s with the limiter's figures; "
                                   "try again in a moment") from None
        except Exception as exc:
            raise StatsUnavailable(f"the limiter's figures could not be read from Postgres ({type(exc).__name__}); "
                                   "try again in a moment") from None

    async def _fetch(self) -> tuple[float, LimiterSnapshot]:
        db = await publisher.database()
        snapshot = await read_snapshot(db.pool, settings.app_id)
        if snapshot is None:
            raise StatsUnavailable("no limiter coordinator has published its figures yet (a worker that starts takes "
                                   "a few seconds to run it); try again shortly")
        self._last = (time.monotonic(), snapshot)
        return self._last

    @staticmethod
    def _aged(read: tuple[float, LimiterSnapshot]) -> LimiterSnapshot:
        at, snapshot = read
        return replace(snapshot, age_seconds=snapshot.age_seconds + (time.monotonic() - at))


snapshots = SnapshotReader()


class SnapshotPublisher:
    """Writes the coordinator's figures to Postgres without ever holding up the scheduler.

    One write at a time: while one is still under way (Postgres slow or away), the
    next second's figures are skipped, not queued. Failures are logged once a minute.
    Readers see the snapshot's age and call it stale (`SnapshotReader`).
    """

    def __init__(self) -> None:
        self._db: Database | None = None
        self._task: asyncio.Future | None = None
        self._logged_at = 0.0
        self.failures = 0
        self._sites_written: tuple[str, float] | None = None  # (coordinator, sites_at) of the per-site part in the row

    def publish(self, coordinator_id: str, figures: dict[str, Any]) -> None:
        """Write `figures`. Their per-site sections (SITE_SECTIONS, dated by "sites_at") go
        only when they are new or were not written yet: the global figures are merged into the row."""
        if self._task is not None and not self._task.done():
            return
        sites = (coordinator_id, figures["sites_at"]) if "sites_at" in figures else None
        if sites is not None and sites == self._sites_written:
            written = {key: value for key, value in figures.items() if key not in SITE_SECTIONS}
            self._task = asyncio.ensure_future(self._write(coordinator_id, written, merge=True))
        else:
            self._task = asyncio.ensure_future(self._write(coordinator_id, figures, sites=sites))

    async def _write(self, coordinator_id: str, figures: dict[str, Any], *, merge: bool = False,
                     sites: tuple[str, float] | None = None) -> None:
        try:
            await asyncio.wait_for(write_snapshot((await self.database()).pool, settings.app_id, coordinator_id, figures,
                                                  merge=merge), timeout=5.0)
            if sites is not None:
                self._sites_written = sites
            if self.failures:
                log.info("limiter: figures published again after %d failed writes", self.failures)
                self.failures = 0
        except Exception as exc:
            self.failures += 1
            if time.monotonic() - self._logged_at > 60.0:
                self._logged_at = time.monotonic()
                log.warning("limiter: could not publish the figures to Postgres (%s: %s; %d failed writes); the stats "
                            "pages show them stale until it works again (is the schema at head? alembic upgrade head)",
                            type(exc).__name__, exc, self.failures)

    async def database(self) -> Database:
        """This worker's small pool for the limiter's snapshot (written and read here)."""
        if self._db is None:
            db = Database(settings.database_url, min_size=1, max_size=2, command_timeout=5.0,
                          application_name="blogstream-limiter")
            await db.start()
            if self._db is None:
                self._db = db
            else:  # another task connected meanwhile
                await db.close()
        return self._db


publisher = SnapshotPublisher()
