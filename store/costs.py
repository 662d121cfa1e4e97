"""What every paid call cost (``request_costs``) and the spend caps that hold a site (``sites``).

A cost is recorded once per provider call: the row is keyed by the provider's own id
of the call (a chat completion id, a prediction id), so a replayed event or a repeated
record changes nothing. The same statement adds the cost to the running totals of the
site's UTC day (``site_spend``) and of all sites' UTC day (``daily_spend``) and, when the
site's monthly or daily cap is reached, marks the site ``budget_exhausted``. Workers then
start no new paid call for it and park its events (store/parked.py) until
``refresh_budgets`` finds no cap holding it (a raised cap, the next day or month).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from .coalesced import Coalesced

__all__ = ["BUDGET_RANGE", "CallCost", "Costs", "Recorded", "budget_problem", "release_advice"]

BUDGET_RANGE = (0.0, 1_000_000_000.0)  # US dollars; the table's CHECKs (migration 0006)
Grouping = Literal["day", "site", "model", "request"]
_UNSET: Any = object()

_COST_COLUMNS = ("request_id", "site_id", "provider", "call_id", "model", "lane", "input_tokens", "output_tokens",
                 "cached_tokens", "images", "seconds", "cost_usd")

# The UTC day and month a cost counts in (budgets are per UTC calendar day and month).
_TODAY = "(now() AT TIME ZONE 'UTC')::date"
_MONTH_START = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"
# What site `s` spent this UTC month and today (store/batches.py reads them too).
_MONTH_USD = f"coalesce((SELECT sum(x.usd) FROM site_spend x WHERE x.site_id = s.site_id AND x.day >= {_MONTH_START}), 0)"
_DAY_USD = f"coalesce((SELECT x.usd FROM site_spend x WHERE x.site_id = s.site_id AND x.day = {_TODAY}), 0)"
# What site `s`'s bulk lines in running batches may still cost (their worst case, store/batches.py): billed
# when the batch ends, it counts as spent for the caps until then.
_RESERVED = ("coalesce((SELECT sum(b.max_usd) FROM openai_batch_lines b "
             "WHERE b.site_id = s.site_id AND b.state = 'batched'), 0)")


def budget_problem(value: Any) -> str | None:
    """What is wrong with a cap in US dollars (None: fine). None itself is fine: no cap."""
    if value is None:
        return None
    low, high = BUDGET_RANGE
    # An int is always finite, and math.isfinite cannot take one too large for a float (OverflowError)
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or (
            not isinstance(value, int) and not math.isfinite(value)):
        return f"must be an amount of US dollars from {low:g} to {high:g}, or null for no cap"
    if not low <= value <= high:
        return f"must be from {low:g} to {high:g} US dollars, or null for no cap"
    return None


def release_advice(cap: str, site_id: str) -> str:
    """What lets a site held by `cap` ('month', 'day', 'global_day') spend again: only that cap, or its period's end.

    A daily hold is not released by a higher monthly cap, and a hold by the global daily cap
    by none of the site's own caps (refresh_budgets checks month, then day, then global)."""
    if cap == "global_day":
        return ("raise the global daily cap BLOGSTREAM_GLOBAL_DAILY_BUDGET_USD (and restart the workers) or wait "
                f"for the next UTC day; site {site_id}'s own caps do not hold it")
    if cap == "day":
        return f"raise its daily cap (blogstream sites set {site_id} --daily-budget USD) or wait for the next UTC day"
    return f"raise its monthly cap (blogstream sites set {site_id} --monthly-budget USD) or wait for the next UTC month"


@dataclass(frozen=True)
class CallCost:
    """One paid call as the provider reported it, and what it cost (None: no price for the model)."""

    request_id: str
    site_id: str
    provider: str  # openai / replicate
    call_id: str  # the provider's id of the call
    model: str
    cost_usd: Decimal | None
    lane: str = "realtime"
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    images: int | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Recorded:
    inserted: bool  # False: this call was recorded before (nothing changed)
    exhausted: str | None  # the cap this cost made the site reach now ('month', 'day'), else None
    global_day_usd: Decimal  # all sites' spend today, this cost included


class Costs:
    """Record costs, read spend, check and refresh the caps; `db` is a started store.database.Database."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._batch: Coalesced[CallCost, Recorded] = Coalesced(self.record_many)

    async def record(self, cost: CallCost) -> Recorded:
        """Insert one call's cost and add it to the day's totals; idempotent per call.

        Costs recorded at the same moment (each blog has two, hundreds of blogs are
        under way) share one statement (`record_many`): one round trip each was a
        tenth of a worker's CPU per blog (docs/bench-capacity.md).
        """
        return await self._batch(cost)

    async def record_many(self, costs: list[CallCost]) -> list[Recorded]:
        """Insert the calls' costs and add them to the day's totals in one statement; idempotent per call.

        Each result is what recording that cost alone, in the list's order, would say:
        a call listed twice is inserted once (the first), and a cap the batch makes a
        site reach is reported by the site's first new cost.
        """
        columns = [[getattr(c, name) for c in costs] for name in _COST_COLUMNS]
        records = await self._db.pool.fetch(_RECORD_MANY_SQL, *columns)
        by_n = {r["n"]: r for r in records}
        return [Recorded(bool(by_n[n]["inserted"]), by_n[n]["exhausted"], Decimal(by_n[n]["global_usd"]))
                for n in range(1, len(costs) + 1)]

    async def hold_all(self, reason: str = "global_day") -> int:
        """Mark every site not held yet (the global daily cap was reached); returns how many."""
        status = await self._db.pool.execute(
            "UPDATE sites SET budget_exhausted = $1, updated_at = now() WHERE budget_exhausted IS NULL", reason)
        return int(status.split()[-1])

    async def exhausted(self, site_id: str) -> str | None:
        """Which cap holds the site now ('month', 'day', 'global_day'), None if it may spend."""
        return await self._db.pool.fetchval("SELECT budget_exhausted FROM sites WHERE site_id = $1", site_id)

    async def refresh_budgets(self, global_daily_usd: float | None, site_ids: list[str] | None = None) -> dict[str, str | None]:
        """Work out again which cap holds each held site (and each of `site_ids`); returns the changes.

        A raised cap or a new UTC day or month releases a site here (NULL); a lowered one
        holds it. What the site's bulk lines in running batches may still cost counts as spent
        (the bulk lane holds a site whose caps they reserve in full, store/batches.py), so such a
        site is released once its batches end with room left. Only held sites and the named ones
        are read, so it is cheap while few are held.
        """
        records = await self._db.pool.fetch(
            f"""
            WITH global AS (
              SELECT coalesce((SELECT usd FROM daily_spend WHERE day = {_TODAY}), 0)
                   + coalesce((SELECT sum(max_usd) FROM openai_batch_lines WHERE state = 'batched'), 0) AS usd
            ), spend AS (
              SELECT s.site_id, s.monthly_budget_usd, s.daily_budget_usd,
                     {_MONTH_USD} AS month_usd,
                     {_DAY_USD} AS day_usd,
                     {_RESERVED} AS reserved
              FROM sites s
              WHERE s.budget_exhausted IS NOT NULL OR s.site_id = ANY($2::text[])
            ), decided AS (
              SELECT site_id, CASE
                  WHEN month_usd + reserved >= monthly_budget_usd THEN 'month'
                  WHEN day_usd + reserved >= daily_budget_usd THEN 'day'
                  WHEN $1::numeric IS NOT NULL AND (SELECT usd FROM global) >= $1::numeric THEN 'global_day'
                END AS reason
              FROM spend
            )
            UPDATE sites s SET budget_exhausted = d.reason, updated_at = now()
              FROM decided d
             WHERE s.site_id = d.site_id AND s.budget_exhausted IS DISTINCT FROM d.reason
            RETURNING s.site_id, d.reason
            """,
            None if not global_daily_usd else Decimal(str(global_daily_usd)), list(site_ids or []),
        )
        return {r["site_id"]: r["reason"] for r in records}

    async def set_budgets(
        self, site_id: str, *, monthly_usd: Any = _UNSET, daily_usd: Any = _UNSET, global_daily_usd: float | None = None,
    ) -> bool:
        """Change a site's caps (None: no cap; leave one out to keep it), then work out its hold again.

        Returns False if the site does not exist. Raises ValueError for an amount out of range.
        """
        for name, value in (("monthly_budget_usd", monthly_usd), ("daily_budget_usd", daily_usd)):
            if value is not _UNSET and (problem := budget_problem(value)):
                raise ValueError(f"{name} {problem}")
        sets, args = [], [site_id]
        for column, value in (("monthly_budget_usd", monthly_usd), ("daily_budget_usd", daily_usd)):
            if value is not _UNSET:
                args.append(None if value is None else Decimal(str(value)))
                sets.append(f"{column} = ${len(args)}")
        if sets:
            status = await self._db.pool.execute(
                f"UPDATE sites SET {', '.join(sets)}, updated_at = now() WHERE site_id = $1", *args)
            if status == "UPDATE 0":
                return False
        elif not await self._db.pool.fetchval("SELECT true FROM sites WHERE site_id = $1", site_id):
            return False
        await self.refresh_budgets(global_daily_usd, [site_id])
        return True

    async def budget(self, site_id: str) -> dict[str, Any] | None:
        """A site's caps, what it spent this UTC month and day, and what holds it (None: no such site)."""
        record = await self._db.pool.fetchrow(
            f"""
            SELECT s.monthly_budget_usd, s.daily_budget_usd, s.budget_exhausted,
                   {_MONTH_USD} AS month_usd,
                   {_DAY_USD} AS day_usd,
                   {_RESERVED} AS reserved
            FROM sites s WHERE s.site_id = $1
            """,
            site_id,
        )
        if record is None:
            return None
        return {
            "monthly_budget_usd": _float(record["monthly_budget_usd"]),
            "daily_budget_usd": _float(record["daily_budget_usd"]),
            "spent_this_month_usd": _float(record["month_usd"]),
            "spent_today_usd": _float(record["day_usd"]),
            "reserved_usd": _float(record["reserved"]),
            "budget_exhausted": record["budget_exhausted"],
        }

    async def budgets(self) -> list[dict[str, Any]]:
        """Every site with a cap: the fraction of each cap used (the metrics' and the alerts' figures)."""
        records = await self._db.pool.fetch(
            f"""
            SELECT s.site_id, s.monthly_budget_usd, s.daily_budget_usd, s.budget_exhausted,
                   {_MONTH_USD} AS month_usd,
                   {_DAY_USD} AS day_usd
            FROM sites s WHERE s.monthly_budget_usd IS NOT NULL OR s.daily_budget_usd IS NOT NULL
            ORDER BY s.site_id
            """
        )
        return [{"site_id": r["site_id"], "monthly_budget_usd": _float(r["monthly_budget_usd"]),
                 "daily_budget_usd": _float(r["daily_budget_usd"]), "spent_this_month_usd": _float(r["month_usd"]),
                 "spent_today_usd": _float(r["day_usd"]), "budget_exhausted": r["budget_exhausted"]} for r in records]

    async def held_counts(self) -> dict[str, int]:
        """How many sites each cap holds now ('month', 'day', 'global_day'), capped sites or not: the
        global daily cap holds sites that have no cap of their own (`budgets` lists only capped ones)."""
        records = await self._db.pool.fetch(
            "SELECT budget_exhausted, count(*) AS n FROM sites WHERE budget_exhausted IS NOT NULL GROUP BY 1")
        return {r["budget_exhausted"]: r["n"] for r in records}

    async def spent_today(self) -> float:
        """All sites' spend this UTC day."""
        return _float(await self._db.pool.fetchval(f"SELECT coalesce((SELECT usd FROM daily_spend WHERE day = {_TODAY}), 0)")) or 0.0

    async def summary(self, *, by: Grouping = "day", site_id: str | None = None, since: datetime | None = None,
                      limit: int = 1000) -> list[dict[str, Any]]:
        """Recorded costs grouped by UTC day, site, model or request, newest or dearest first."""
        key = {
            "day": "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            "site": "site_id",
            "model": "provider || ':' || model",
            "request": "request_id",
        }[by]
        order = "key DESC" if by == "day" else "usd DESC, key"
        records = await self._db.pool.fetch(
            f"""
            SELECT {key} AS key, count(*) AS calls, coalesce(sum(cost_usd), 0) AS usd,
                   count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced,
                   coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
                   coalesce(sum(images), 0) AS images, count(DISTINCT request_id) AS requests
            FROM request_costs
            WHERE ($1::text IS NULL OR site_id = $1) AND ($2::timestamptz IS NULL OR recorded_at >= $2)
            GROUP BY 1 ORDER BY {order} LIMIT $3
            """,
            site_id, since, limit,
        )
        return [{by: r["key"], "usd": _float(r["usd"]), "calls": r["calls"], "requests": r["requests"],
                 "input_tokens": r["input_tokens"], "output_tokens": r["output_tokens"], "images": r["images"],
                 "unpriced_calls": r["unpriced"]} for r in records]

    async def totals(self, *, site_id: str | None = None, since: datetime | None = None) -> dict[str, Any]:
        """Every recorded call's sum over the same filter as `summary`: its rows stop at `limit`
        (a backfill has thousands of requests, a deployment thousands of sites), the totals never do."""
        record = await self._db.pool.fetchrow(
            """
            SELECT count(*) AS calls, coalesce(sum(cost_usd), 0) AS usd, count(DISTINCT request_id) AS requests
            FROM request_costs
            WHERE ($1::text IS NULL OR site_id = $1) AND ($2::timestamptz IS NULL OR recorded_at >= $2)
            """,
            site_id, since,
        )
        return {"usd": _float(record["usd"]) or 0.0, "calls": record["calls"], "requests": record["requests"]}

    async def of_request(self, request_id: str) -> list[dict[str, Any]]:
        """Every recorded call of one request, oldest first."""
        records = await self._db.pool.fetch(
            "SELECT provider, call_id, model, lane, input_tokens, output_tokens, images, seconds, cost_usd, recorded_at "
            "FROM request_costs WHERE request_id = $1 ORDER BY id", request_id)
        return [{**dict(r), "cost_usd": _float(r["cost_usd"])} for r in records]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


# One row per input cost, in the input's order (n). The first of each (provider, call_id) is
# inserted (or found there already); totals are added per site and day; a site whose cap is
# reached is held, and its first new cost in the batch says so. What the site's bulk lines in
# running batches may still cost counts as spent (a line whose own cost is recorded here, as its
# batch ends, counts with that cost instead).
_RECORD_MANY_SQL = f"""
WITH input AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                       $8::int8[], $9::int8[], $10::int8[], $11::float8[], $12::numeric[])
         WITH ORDINALITY AS i(request_id, site_id, provider, call_id, model, lane, input_tokens, output_tokens,
                              cached_tokens, images, seconds, cost_usd, n)
), firsts AS (
  SELECT DISTINCT ON (provider, call_id) * FROM input ORDER BY provider, call_id, n
), ins AS (
  INSERT INTO request_costs (request_id, site_id, provider, call_id, model, lane, input_tokens,
                             output_tokens, cached_tokens, images, seconds, cost_usd)
  SELECT request_id, site_id, provider, call_id, model, lane, input_tokens, output_tokens, cached_tokens, images,
         seconds, cost_usd
  FROM firsts ORDER BY n
  ON CONFLICT (provider, call_id) DO NOTHING
  RETURNING provider, call_id, site_id, coalesce(cost_usd, 0) AS usd, (recorded_at AT TIME ZONE 'UTC')::date AS day
), site_day AS (
  INSERT INTO site_spend AS s (site_id, day, usd) SELECT site_id, day, sum(usd) FROM ins GROUP BY site_id, day
  ON CONFLICT (site_id, day) DO UPDATE SET usd = s.usd + EXCLUDED.usd
  RETURNING site_id, day, usd
), all_day AS (
  INSERT INTO daily_spend AS d (day, usd) SELECT day, sum(usd) FROM ins GROUP BY day
  ON CONFLICT (day) DO UPDATE SET usd = d.usd + EXCLUDED.usd
  RETURNING usd
), totals AS (
  SELECT sd.site_id, sd.usd AS day_usd,
         sd.usd + coalesce((SELECT sum(o.usd) FROM site_spend o
                            WHERE o.site_id = sd.site_id AND o.day >= date_trunc('month', sd.day)::date
                              AND o.day < sd.day), 0) AS month_usd,
         -- the site's bulk lines in running batches, but those whose own cost is in this statement
         coalesce((SELECT sum(b.max_usd) FROM openai_batch_lines b
                   WHERE b.site_id = sd.site_id AND b.state = 'batched'
                     AND b.request_id NOT IN (SELECT request_id FROM firsts)), 0) AS reserved
  FROM site_day sd
), held AS (
  UPDATE sites s
     SET budget_exhausted = CASE WHEN t.month_usd + t.reserved >= s.monthly_budget_usd THEN 'month' ELSE 'day' END,
         updated_at = now()
    FROM totals t
   WHERE s.site_id = t.site_id AND s.budget_exhausted IS NULL
     AND (t.month_usd + t.reserved >= s.monthly_budget_usd OR t.day_usd + t.reserved >= s.daily_budget_usd)
  RETURNING s.site_id, s.budget_exhausted
), inserted AS (
  SELECT f.n, f.site_id FROM firsts f JOIN ins USING (provider, call_id)
), reporter AS (
  SELECT DISTINCT ON (site_id) n, site_id FROM inserted ORDER BY site_id, n
)
SELECT i.n,
       EXISTS (SELECT 1 FROM inserted x WHERE x.n = i.n) AS inserted,
       (SELECT h.budget_exhausted FROM held h JOIN reporter r USING (site_id) WHERE r.n = i.n) AS exhausted,
       coalesce((SELECT max(usd) FROM all_day), (SELECT usd FROM daily_spend WHERE day = {_TODAY}), 0) AS global_usd
FROM input i
"""
