"""The sites registry: per-site settings (Wix credentials, weight, limits, paused).

They can change at runtime; ``SiteCache`` serves them with a short TTL so a change is
seen within seconds without one query per event. The site controls that act on queued
requests (cancel them, reopen a failed one for a retry) live here too.

Secrets: ``Site.__repr__`` masks the Wix API key, so it never leaks into logs.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from store.outcomes import RETRYABLE

__all__ = ["CONTROL_RANGES", "Site", "SiteCache", "SiteRegistry", "control_problem"]


@dataclass(frozen=True, repr=False)
class Site:
    site_id: str
    name: str = ""
    wix_api_key: str = ""
    wix_member_id: str | None = None
    weight: float = 1.0
    max_in_flight: int = 20
    max_queued: int = 1000  # interactive requests pending (the intake's 429 site_queue_full above it)
    paused: bool = False
    max_queued_bulk: int = 10_000  # bulk requests pending, counted apart: a backfill never fills max_queued
    monthly_budget_usd: float | None = None  # spend caps in US dollars (None: no cap), store/costs.py
    daily_budget_usd: float | None = None
    budget_exhausted: str | None = None  # the cap that holds it now: 'month', 'day', 'global_day'

    @property
    def held(self) -> bool:
        """No new paid call may start for it: paused, or a spend cap reached."""
        return self.paused or self.budget_exhausted is not None

    def __repr__(self) -> str:
        # Sites get logged (scheduler decisions, errors); the Wix key must never be.
        key = "'***'" if self.wix_api_key else "''"
        return (
            f"Site(site_id={self.site_id!r}, name={self.name!r}, wix_api_key={key}, "
            f"wix_member_id={self.wix_member_id!r}, weight={self.weight!r}, "
            f"max_in_flight={self.max_in_flight!r}, max_queued={self.max_queued!r}, "
            f"max_queued_bulk={self.max_queued_bulk!r}, "
            f"paused={self.paused!r}, budget_exhausted={self.budget_exhausted!r})"
        )

    __str__ = __repr__


_WRITE_COLUMNS = "site_id, name, wix_api_key, wix_member_id, weight, max_in_flight, max_queued, paused, max_queued_bulk"
_SITE_COLUMNS = _WRITE_COLUMNS + ", monthly_budget_usd, daily_budget_usd, budget_exhausted"


def _site(record: asyncpg.Record) -> Site:
    return Site(
        site_id=record["site_id"],
        name=record["name"],
        wix_api_key=record["wix_api_key"],
        wix_member_id=record["wix_member_id"],
        weight=float(record["weight"]),
        max_in_flight=int(record["max_in_flight"]),
        max_queued=int(record["max_queued"]),
        max_queued_bulk=int(record["max_queued_bulk"]),
        paused=bool(record["paused"]),
        monthly_budget_usd=None if record["monthly_budget_usd"] is None else float(record["monthly_budget_usd"]),
        daily_budget_usd=None if record["daily_budget_usd"] is None else float(record["daily_budget_usd"]),
        budget_exhausted=record["budget_exhausted"],
    )


# The range of each control (inclusive), the same in the HTTP API, here and in the table's CHECKs
# (migration 0003). A weight of 100 already gives a site a hundred times the share of a default
# one; more would only let one site take every contested budget.
WEIGHT_RANGE = (0.01, 100.0)
MAX_IN_FLIGHT_RANGE = (1, 1000)
MAX_QUEUED_RANGE = (1, 100_000)
MAX_QUEUED_BULK_RANGE = (1, 1_000_000)  # migration 0013
CONTROL_RANGES: dict[str, tuple[float, float]] = {
    "weight": WEIGHT_RANGE, "max_in_flight": MAX_IN_FLIGHT_RANGE, "max_queued": MAX_QUEUED_RANGE,
    "max_queued_bulk": MAX_QUEUED_BULK_RANGE,
}


def control_problem(name: str, value: Any) -> str | None:
    """What is wrong with one control's value (None: it is fine). Numbers only: no bool, NaN or infinity."""
    whole, (lowest, highest) = name != "weight", CONTROL_RANGES[name]
    low, high = (str(int(bound)) if whole else f"{bound:g}" for bound in (lowest, highest))  # 1000000, not 1e+06
    # An int is always finite, and math.isfinite cannot take one too large for a float (OverflowError)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return f"must be a {'whole ' if whole else ''}number from {low} to {high}"
    if whole and value != int(value):
        return f"must be a whole number from {low} to {high}"
    if not lowest <= value <= highest:
        return f"must be from {low} to {high}"
    return None


def _check_controls(**controls: float | None) -> None:
    # The table has CHECKs too; failing here gives the caller a clear ValueError instead.
    for name, value in controls.items():
        if value is not None and (problem := control_problem(name, value)):
            raise ValueError(f"{name} {problem}")


# --- the methods (mixed into store.database.Database) -----------------------------------


class SiteRegistry:
    """Reads and writes of ``sites``, and the site controls over queued requests."""

    pool: asyncpg.Pool  # provided by store.database.Database

    async def get_site(self, site_id: str) -> Site | None:
        """Fresh read (use SiteCache on hot paths)."""
        record = await self.pool.fetchrow(f"SELECT {_SITE_COLUMNS} FROM sites WHERE site_id = $1", site_id)
        return _site(record) if record is not None else None

    async def upsert_site(self, site: Site) -> None:
        _check_controls(weight=site.weight, max_in_flight=site.max_in_flight, max_queued=site.max_queued,
                        max_queued_bulk=site.max_queued_bulk)
        await self.pool.execute(
            f"""
            INSERT INTO sites ({_WRITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (site_id) DO UPDATE SET
              name = EXCLUDED.name, wix_api_key = EXCLUDED.wix_api_key, wix_member_id = EXCLUDED.wix_member_id,
              weight = EXCLUDED.weight, max_in_flight = EXCLUDED.max_in_flight,
              max_queued = EXCLUDED.max_queued, paused = EXCLUDED.paused,
              max_queued_bulk = EXCLUDED.max_queued_bulk, updated_at = now()
            """,
            site.site_id, site.name, site.wix_api_key, site.wix_member_id,
            float(site.weight), int(site.max_in_flight), int(site.max_queued), bool(site.paused),
            int(site.max_queued_bulk),
        )

    async def update_site_controls(
        self,
        site_id: str,
        *,
        paused: bool | None = None,
        weight: float | None = None,
        max_in_flight: int | None = None,
        max_queued: int | None = None,
        max_queued_bulk: int | None = None,
    ) -> Site | None:
        """Change only the given controls; returns the updated site, None if it does not exist."""
        _check_controls(weight=weight, max_in_flight=max_in_flight, max_queued=max_queued,
                        max_queued_bulk=max_queued_bulk)
        record = await self.pool.fetchrow(
            f"""
            UPDATE sites SET
              paused = COALESCE($2, paused), weight = COALESCE($3, weight),
              max_in_flight = COALESCE($4, max_in_flight), max_queued = COALESCE($5, max_queued),
              max_queued_bulk = COALESCE($6, max_queued_bulk), updated_at = now()
            WHERE site_id = $1
            RETURNING {_SITE_COLUMNS}
            """,
            site_id, paused,
            None if weight is None else float(weight),
            None if max_in_flight is None else int(max_in_flight),
            None if max_queued is None else int(max_queued),
            None if max_queued_bulk is None else int(max_queued_bulk),
        )
        return _site(record) if record is not None else None

    async def cancel_queued(self, site_id: str, *, reason: str) -> list[str]:
        """Cancel the site's requests that no stage has started; returns their ids.

        Race-free with the generate stage: the cancellation is written as the
        request's finished `generate` effect, so either it lands first (the stage
        then finds it and records CANCELLED) or the stage's claim does (the
        request has started and is left to finish).
        """
        records = await self.pool.fetch(
            """
            WITH queued AS (
              SELECT id FROM blog_generations
              WHERE site_id = $1 AND status = 'PENDING' AND stage = 'requested'
            ), taken AS (
              INSERT INTO stage_outputs (request_id, stage, site_id, status, payload)
              SELECT id, 'generate', $1, 'done', jsonb_build_object('cancelled', true, 'reason', $2::text)
              FROM queued
              ON CONFLICT (request_id, stage) DO NOTHING
              RETURNING request_id
            )
            UPDATE blog_generations g
              SET status = 'CANCELLED', stage = 'cancelled', stage_rank = 3, error = $2,
                  finished_at = now(), updated_at = now()
            FROM taken WHERE g.id = taken.request_id
            RETURNING g.id
            """,
            site_id, reason,
        )
        return [r["id"] for r in records]

    async def reopen_failed(self, request_id: str) -> tuple[dict[str, Any], str | None] | None:
        """FAILED -> PENDING for a retry: returns (the request to send again, the error it had).

        The row goes back to stage `requested` and on to the next run (`retry` + 1),
        so the sink's forward-only rule lets the retry's events move it on again, and
        no event of an earlier run (an old FAILED read again) can end it. The request
        returned is the stored one with that run in its `retry`. A row the seed's
        retry statement reset (PENDING at stage `failed`, RETRYABLE) is reopened the
        same way. None: the row is neither, or holds no request to send again (it
        never was a valid request).
        """
        record = await self.pool.fetchrow(
            f"""
            UPDATE blog_generations g
               SET status = 'PENDING', stage = 'requested', stage_rank = 0, error = NULL,
                   finished_at = NULL, retry = g.retry + 1, updated_at = now()
              FROM (SELECT id, error FROM blog_generations
                     WHERE id = $1 AND {RETRYABLE} AND request IS NOT NULL FOR UPDATE) old
             WHERE g.id = old.id
            RETURNING jsonb_set(g.request, '{{retry}}', to_jsonb(g.retry)) AS request, old.error
            """,
            request_id,
        )
        return None if record is None else (record["request"], record["error"])

    async def restore_failed(self, request_id: str, error: str | None) -> None:
        """Undo `reopen_failed` when the retry could not be sent (the row is FAILED again).

        The run number stays counted up: the broker may have taken the record after all
        (an answer that came too late), and that run's results are then the row's. The
        next retry is the run after it.
        """
        await self.pool.execute(
            """
            UPDATE blog_generations
               SET status = 'FAILED', stage = 'failed', stage_rank = 3, error = $2,
                   finished_at = now(), updated_at = now()
             WHERE id = $1 AND status = 'PENDING' AND stage = 'requested'
            """,
            request_id, error,
        )

    async def list_sites(self) -> list[Site]:
        return (await self.sites_changed(None))[0]

    async def sites_changed(self, since: datetime | None, *, batch: int = 1000) -> tuple[list[Site], datetime]:
        """The sites changed at or after `since` (every site, in site id order, when None), and the
        database's clock when they were read.

        Pass that clock, less a margin for writes still in flight (a row's
        `updated_at` is its transaction's start), as the next `since`: a
        trigger (migration 0008) moves `updated_at` with every change. The
        rows become `Site`s a batch at a time with the event loop let run in
        between: 10,000 in one go held a worker's loop for ~30 ms.
        """
        async with self.pool.acquire() as conn:
            at: datetime = await conn.fetchval("SELECT statement_timestamp()")
            if since is None:
                records = await conn.fetch(f"SELECT {_SITE_COLUMNS} FROM sites ORDER BY site_id")
            else:
                records = await conn.fetch(f"SELECT {_SITE_COLUMNS} FROM sites WHERE updated_at >= $1", since)
        sites: list[Site] = []
        for start in range(0, len(records), batch):
            if start:
                await asyncio.sleep(0)
            sites.extend(_site(r) for r in records[start:start + batch])
        return sites, at


# --- site cache -----------------------------------------------------------------------------


class _SiteSource(Protocol):
    async def get_site(self, site_id: str) -> Site | None: ...


class SiteCache:
    """``get(site_id)`` served from memory for ``ttl`` seconds.

    Per-site settings (paused, weight, limits, Wix credentials) thus change without a
    restart, within ``ttl``, yet cost no query per event. Unknown sites are cached too
    (as None), and concurrent misses for one site share a single query.
    """

    def __init__(self, db: _SiteSource, *, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Site | None]] = {}
        self._loading: dict[str, asyncio.Task[Site | None]] = {}
        self._generation = 0  # bumped by invalidate(): loads started before it are not stored
        # A read of every site (`fill`), kept as given: served until `_listed_until`, but
        # not the sites invalidated since (`_listed_stale`).
        self._listed: Mapping[str, Site] = {}
        self._listed_until = -math.inf
        self._listed_stale: set[str] = set()

    async def get(self, site_id: str) -> Site | None:
        now = self._clock()
        if now < self._listed_until and site_id not in self._listed_stale and site_id in self._listed:
            return self._listed[site_id]
        entry = self._entries.get(site_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        task = self._loading.get(site_id)
        if task is None:
            task = asyncio.ensure_future(self._load(site_id, self._generation))
            self._loading[site_id] = task
            task.add_done_callback(lambda t, key=site_id: self._load_done(key, t))
        # shield: a cancelled caller must not cancel the load other callers wait on.
        return await asyncio.shield(task)

    def invalidate(self, site_id: str | None = None) -> None:
        """Forget one site (or all): the next get() reads the database."""
        self._generation += 1
        if site_id is None:
            self._entries.clear()
            self._loading.clear()
            self._listed_until = -math.inf
        else:
            self._entries.pop(site_id, None)
            self._loading.pop(site_id, None)
            self._listed_stale.add(site_id)

    def read_started(self) -> tuple[float, int]:
        """Taken before reading every site yourself, for `fill` (when, and which invalidations it follows)."""
        return self._clock(), self._generation

    def fill(self, sites: Mapping[str, Site], started: tuple[float, int]) -> None:
        """Serve these sites (by site id), read from `started` on, for the TTL: a worker that reads every
        site anyway (the site controls, every two seconds) then asks for none of them one by one.

        The mapping is kept as it is, not copied into the cache: at 10,000 sites a copy every two seconds
        held the event loop ~5 ms each time (docs/bench-growth.md, session 21). The caller gives a new
        mapping or changes this one only after `invalidate()`.
        """
        at, generation = started
        if generation == self._generation:  # nothing was invalidated while they were read
            self._listed, self._listed_until, self._listed_stale = sites, at + self._ttl, set()

    async def _load(self, site_id: str, generation: int) -> Site | None:
        started = self._clock()  # TTL counts from the read, never longer
        site = await self._db.get_site(site_id)
        if generation == self._generation:
            self._entries[site_id] = (started + self._ttl, site)
        return site

    def _load_done(self, site_id: str, task: asyncio.Task[Site | None]) -> None:
        if self._loading.get(site_id) is task:
            del self._loading[site_id]
        if not task.cancelled():
            task.exception()  # mark retrieved: all callers may have gone (cancelled) meanwhile
