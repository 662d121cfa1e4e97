"""The ``blog_generations`` table: the outcome sink's upsert and the reads over it.

* **Outcome sink** - ``upsert_outcomes`` writes batches of pipeline events into
  ``blog_generations`` in one round trip. Events arrive at least once and out of order
  across topics, so the upsert is *forward only*: a row's status/stage never moves back
  (DONE never becomes PENDING again), and a late or replayed event may only fill columns
  that are still NULL.
* **Reads** behind the health endpoint and the intake API (same semantics as the seed's
  SQL, which still runs unchanged against the table).
* **Tenancy** - a request id belongs to the site of its first row, for good: no statement
  here changes a row's ``site_id`` or writes one site's event into another site's row
  (the upsert refuses and reports them, ``request_owner`` tells the stages whose it is).
* **Runs** - ``retry`` counts the runs of a request (``blogstream retry`` starts the next one,
  store/sites.py ``reopen_failed``); every event carries the run it belongs to. An event of an
  earlier run than the row's changes the row only when it is DONE (the post is on the site),
  so an old failure read again never ends a retry that is still running.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import asyncpg

from .coalesced import Coalesced

__all__ = [
    "ErrorRow",
    "OutcomeWrite",
    "FINAL_STATUSES",
    "HealthFigures",
    "OutcomeRow",
    "Outcomes",
    "RETRYABLE",
    "STAGE_RANKS",
    "STATUSES",
    "dump_json",
    "merge_outcomes",
    "retryable",
]

# --- vocabulary --------------------------------------------------------------------

STATUSES = ("PENDING", "DONE", "FAILED", "CANCELLED")
FINAL_STATUSES = frozenset({"DONE", "FAILED", "CANCELLED"})
# What a retry may send again: a FAILED row, or one the seed's retry statement (`SET status = 'PENDING',
# error = NULL WHERE status = 'FAILED'`) reset by hand. That statement only resets the row: nothing sends
# its request again, so without a retry it would stay PENDING for good.
RETRYABLE = "(status = 'FAILED' OR (status = 'PENDING' AND stage = 'failed'))"


def retryable(status: str, stage: str) -> bool:
    """Python twin of RETRYABLE."""
    return status == "FAILED" or (status == "PENDING" and stage == "failed")

# Stage -> rank. Every final stage has rank 3 so nothing can follow it (see _advances).
STAGE_RANKS: dict[str, int] = {
    "requested": 0,
    "drafted": 1,
    "illustrated": 2,
    "published": 3,
    "failed": 3,
    "cancelled": 3,
}
# The status each final stage implies (non-final stages are PENDING).
_FINAL_STAGE_STATUS = {"published": "DONE", "failed": "FAILED", "cancelled": "CANCELLED"}


def dump_json(value: Any) -> str:
    """Compact JSON text (the request column, and the pool's json/jsonb codec)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- records -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeRow:
    """One pipeline event, as the sink writes it into blog_generations.

    ``at`` is the event time; a naive datetime is taken as UTC. Rows are validated on
    construction: a final status must sit at rank 3 and a stage must match its rank,
    otherwise the forward-only rule could be defeated (e.g. a FAILED row at rank 1
    would be overtaken by a replayed rank-2 PENDING event).
    """

    request_id: str
    site_id: str
    status: str
    stage: str
    stage_rank: int
    at: datetime
    request: dict[str, Any] | None = None
    title: str | None = None
    post_id: str | None = None
    post_url: str | None = None
    image_url: str | None = None
    error: str | None = None
    attempts: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retry: int = 0  # the run of the request this event belongs to (BlogRequest.retry)

    def __post_init__(self) -> None:
        if not self.request_id or not self.site_id:
            raise ValueError("OutcomeRow needs a request_id and a site_id")
        if self.status not in STATUSES:
            raise ValueError(f"OutcomeRow.status {self.status!r} is not one of {STATUSES}")
        if STAGE_RANKS.get(self.stage) != self.stage_rank:
            raise ValueError(
                f"OutcomeRow stage {self.stage!r} with rank {self.stage_rank!r} does not match "
                f"{STAGE_RANKS}"
            )
        expected = _FINAL_STAGE_STATUS.get(self.stage, "PENDING")
        if self.status != expected:
            raise ValueError(f"OutcomeRow stage {self.stage!r} needs status {expected}, got {self.status!r}")
        if self.at.tzinfo is None:
            object.__setattr__(self, "at", self.at.replace(tzinfo=timezone.utc))


@dataclass(frozen=True)
class OutcomeWrite:
    """What ``store_outcomes`` did: rows inserted or changed, and the events it refused.

    ``foreign`` holds (request_id, site_id) of events whose request id belongs to another
    site: nothing of them was written.
    """

    changed: int
    foreign: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class HealthFigures:
    queue_size: int  # COUNT PENDING
    errors_last_hour: int  # FAILED with created_at in the last hour
    completed_last_hour: int  # DONE with finished_at in the last hour
    blogs_per_minute: float  # completed_last_hour / 60

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ErrorRow(NamedTuple):
    id: str
    error: str | None
    created_at: datetime


# --- outcome upsert (SQL and its in-batch mirror) ----------------------------------

# Columns that follow the "newer stage wins, otherwise only fill NULLs" rule.
_FOLDED = (
    "title", "post_id", "post_url", "image_url", "error",
    "prompt_tokens", "completion_tokens", "drafted_at", "illustrated_at", "finished_at",
)

# Does the incoming row move the stored one forward? Nothing ever moves a DONE row. Within one
# run (equal `retry`): a higher rank does (unless it would turn a final status back into
# PENDING); at equal rank only PENDING -> final does, which is how a row the seed's retry
# UPDATE reset to PENDING (rank 3) can finish again. An event of a later run than the row's
# does (that run is what the row follows now); one of an earlier run does not (an old FAILED
# read again while a retry runs), unless it is DONE. DONE always does: a DONE result means the
# post is on the site (the same id sent again after a failure, a retry's record the broker took
# after answering late, an old run's post), and a row that kept saying FAILED would have its
# owner submit it again under a new id: a second post.
_SAME_RUN_ADVANCES = (
    "((EXCLUDED.stage_rank > b.stage_rank AND (b.status = 'PENDING' OR EXCLUDED.status <> 'PENDING'))"
    " OR (EXCLUDED.stage_rank = b.stage_rank AND b.status = 'PENDING' AND EXCLUDED.status <> 'PENDING'))"
)
_ADVANCES = (
    "(b.status <> 'DONE' AND (EXCLUDED.status = 'DONE' OR EXCLUDED.retry > b.retry"
    f" OR (EXCLUDED.retry = b.retry AND {_SAME_RUN_ADVANCES})))"
)
_EARLIER_RUN = "EXCLUDED.retry < b.retry"
# A DONE row holds no error (neither the failure it ended nor a replayed one's), nor does a PENDING
# one (a later run's event ends the earlier run's failure); an earlier run's failure adds none.
_STATUS = f"(CASE WHEN {_ADVANCES} THEN EXCLUDED.status ELSE b.status END)"
_ERROR = (
    f"CASE WHEN {_STATUS} IN ('DONE', 'PENDING') THEN NULL"
    f" WHEN {_ADVANCES} THEN COALESCE(EXCLUDED.error, b.error)"
    f" WHEN {_EARLIER_RUN} THEN b.error ELSE COALESCE(b.error, EXCLUDED.error) END"
)


def _advances(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Python twin of _ADVANCES (records as `_as_record` makes them), to merge a batch as the database would."""
    if old["status"] == "DONE":
        return False
    if new["status"] == "DONE" or new["retry"] > old["retry"]:
        return True
    if new["retry"] < old["retry"]:
        return False
    old_rank, new_rank, old_status, new_status = old["stage_rank"], new["stage_rank"], old["status"], new["status"]
    if new_rank > old_rank:
        return old_status == "PENDING" or new_status != "PENDING"
    return new_rank == old_rank and old_status == "PENDING" and new_status != "PENDING"


def _build_upsert_sql() -> str:
    sets = [
        *(f"{c} = CASE WHEN {_ADVANCES} THEN EXCLUDED.{c} ELSE b.{c} END" for c in ("status", "stage", "stage_rank")),
        "request = COALESCE(b.request, EXCLUDED.request)",  # the first request json stays
        *(
            f"{c} = CASE WHEN {_ADVANCES} THEN COALESCE(EXCLUDED.{c}, b.{c}) WHEN {_EARLIER_RUN} THEN b.{c}"
            f" ELSE COALESCE(b.{c}, EXCLUDED.{c}) END"
            for c in _FOLDED if c != "error"
        ),
        f"error = {_ERROR}",
        "attempts = GREATEST(b.attempts, EXCLUDED.attempts)",
        "retry = GREATEST(b.retry, EXCLUDED.retry)",
        "created_at = LEAST(b.created_at, EXCLUDED.created_at)",  # the earliest event seen
        "updated_at = now()",
    ]
    # Skip the write entirely when the event changes nothing (the common replay case):
    # no dead tuple, no WAL, and the returned count means "rows that changed".
    changes = [
        _ADVANCES,
        "EXCLUDED.attempts > b.attempts",
        "EXCLUDED.retry > b.retry",
        "EXCLUDED.created_at < b.created_at",
        "(b.request IS NULL AND EXCLUDED.request IS NOT NULL)",
        *(f"(b.{c} IS NULL AND EXCLUDED.{c} IS NOT NULL AND NOT {_EARLIER_RUN})" for c in _FOLDED if c != "error"),
        f"(b.error IS NULL AND EXCLUDED.error IS NOT NULL AND b.status NOT IN ('DONE', 'PENDING') AND NOT {_EARLIER_RUN})",
    ]
    sep = ",\n  "
    # A row belongs to the site of its first event: an event of another site never changes
    # it (the WHERE), and is reported (foreign) so the sink can dead-letter it.
    return f"""
WITH foreign_rows AS (
  SELECT g.id FROM blog_generations g JOIN unnest($1::text[], $2::text[]) AS u(id, site_id) ON u.id = g.id
  WHERE g.id = ANY($1::text[]) AND g.site_id <> u.site_id
), written AS (
INSERT INTO blog_generations AS b (
  id, site_id, status, stage, stage_rank, request, title, post_id, post_url, image_url, error,
  attempts, prompt_tokens, completion_tokens, created_at, updated_at, drafted_at, illustrated_at, finished_at,
  retry)
SELECT u.id, u.site_id, u.status, u.stage, u.stage_rank, u.request::jsonb, u.title, u.post_id, u.post_url,
       u.image_url, u.error, u.attempts, u.prompt_tokens, u.completion_tokens, u.created_at, now(),
       u.drafted_at, u.illustrated_at, u.finished_at, u.retry
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::int4[], $13::int4[], $14::int4[], $15::timestamptz[],
            $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::int4[])
     AS u(id, site_id, status, stage, stage_rank, request, title, post_id, post_url, image_url, error,
          attempts, prompt_tokens, completion_tokens, created_at, drafted_at, illustrated_at, finished_at, retry)
ON CONFLICT (id) DO UPDATE SET
  {sep.join(sets)}
WHERE b.site_id = EXCLUDED.site_id AND ({(chr(10) + '   OR ').join(changes)})
RETURNING 1
)
SELECT (SELECT count(*) FROM written)::int AS changed, ARRAY(SELECT id FROM foreign_rows) AS foreign_ids
"""


_UPSERT_OUTCOMES_SQL = _build_upsert_sql()

# Order of the unnest() arrays above.
_UPSERT_COLUMNS = (
    "id", "site_id", "status", "stage", "stage_rank", "request", "title", "post_id", "post_url",
    "image_url", "error", "attempts", "prompt_tokens", "completion_tokens", "created_at",
    "drafted_at", "illustrated_at", "finished_at", "retry",
)


def _as_record(row: OutcomeRow) -> dict[str, Any]:
    """An event as the column values it contributes (stage times only for its own stage)."""
    return {
        "id": row.request_id,
        "site_id": row.site_id,
        "status": row.status,
        "stage": row.stage,
        "stage_rank": row.stage_rank,
        "request": row.request,
        "title": row.title,
        "post_id": row.post_id,
        "post_url": row.post_url,
        "image_url": row.image_url,
        "error": row.error,
        "attempts": row.attempts or 0,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "created_at": row.at,
        "drafted_at": row.at if row.stage_rank == 1 else None,
        "illustrated_at": row.at if row.stage_rank == 2 else None,
        "finished_at": row.at if row.status in FINAL_STATUSES else None,
        "retry": row.retry,
    }


def _fold(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge ``new`` into ``old`` in place with the same rules as the ON CONFLICT clause."""
    adv = _advances(old, new)
    earlier = new["retry"] < old["retry"]
    if adv:
        old["status"], old["stage"], old["stage_rank"] = new["status"], new["stage"], new["stage_rank"]
    if old["request"] is None:
        old["request"] = new["request"]
    for c in _FOLDED:
        if earlier and not adv:
            continue  # an earlier run's event adds nothing
        first, second = (new[c], old[c]) if adv else (old[c], new[c])
        old[c] = first if first is not None else second
    if old["status"] in ("DONE", "PENDING"):
        old["error"] = None
    old["attempts"] = max(old["attempts"], new["attempts"])
    old["retry"] = max(old["retry"], new["retry"])
    old["created_at"] = min(old["created_at"], new["created_at"])


def merge_outcomes(rows: Iterable[OutcomeRow]) -> list[dict[str, Any]]:
    """One record per request id, sorted by id.

    A statement's ON CONFLICT may touch a row only once, so duplicates of one batch are
    merged here first, with the same rules as the ON CONFLICT clause (the highest rank
    wins; at equal rank only PENDING -> final moves on; the other events still fill NULL
    columns, so e.g. the request json of a 'requested' event merged with its 'drafted'
    event is kept rather than dropped with the lower-ranked row).
    Sorting by id makes concurrent sinks lock rows in one order: no deadlocks.
    """
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        rec = _as_record(row)
        cur = merged.get(row.request_id)
        if cur is None:
            merged[row.request_id] = rec
        else:
            _fold(cur, rec)
    return [merged[k] for k in sorted(merged)]


def _one_site_per_id(rows: Iterable[OutcomeRow]) -> list[list[OutcomeRow]]:
    """The batch in parts where each request id comes with one site and one run only (usually one part).

    An id that arrives with two sites in one batch must not be merged into one row: the
    second part is written after the first, and the database tells which site owns it.
    Nor are two runs of a request merged into one record (an old run's event read again
    while a retry's arrive): which of them is the row's run only the database knows, and an
    earlier run's event must add nothing to a later run's row. (Whatever order the parts
    take, a row ends as the events one by one would leave it: a property test checks it.)
    """
    parts: list[tuple[dict[str, tuple[str, int]], list[OutcomeRow]]] = []
    for row in rows:
        key = (row.site_id, row.retry)
        for keys, part in parts:
            if keys.setdefault(row.request_id, key) == key:
                part.append(row)
                break
        else:
            parts.append(({row.request_id: key}, [row]))
    return [part for _, part in parts]


# PENDING rows per site and lane (rows with a NULL id), plus which of the given ids exist
# (rows with an id): the intake's pending gauge in one round trip. A row's lane is its
# request's priority; a row without a request (refused input never is PENDING) is interactive.
_PENDING_SNAPSHOT_SQL = """
SELECT site_id, coalesce(request->>'priority' = 'bulk', false) AS bulk, count(*)::int AS n, NULL::text AS id
  FROM blog_generations WHERE status = 'PENDING' GROUP BY 1, 2
UNION ALL
SELECT NULL, NULL, NULL, id FROM blog_generations WHERE id = ANY($1::text[])
"""


# --- the methods (mixed into store.database.Database) -----------------------------------


# Each id's row, claimed for its site if it has none: the owner, or NULL when another transaction's
# insert committed after this statement began (it is not in this snapshot: read it again). The ids
# come once each, sorted as the sink sorts its rows (merge_outcomes): both lock rows in one order.
_CLAIM_OWNERS_SQL = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS i(id, site_id, request, at)
), claimed AS (
    INSERT INTO blog_generations (id, site_id, status, stage, stage_rank, request, created_at)
    SELECT id, site_id, 'PENDING', 'requested', 0, request::jsonb, COALESCE(at, now()) FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING id, site_id
)
SELECT i.id, COALESCE(c.site_id, g.site_id) AS site_id
FROM input i LEFT JOIN claimed c USING (id) LEFT JOIN blog_generations g ON g.id = i.id
"""


class _OwnerClaims(Coalesced[tuple, "str | None"]):
    """`request_owner`'s statement, shared by the calls made while one runs (the first asker of an id wins)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(self._claim)
        self.pool = pool

    async def _claim(self, items: list[tuple]) -> list[str | None]:
        first = {item[0]: item for item in reversed(items)}  # the first call of each id
        ids, sites, requests, times = (list(column) for column in zip(*(first[i] for i in sorted(first))))
        rows = await self.pool.fetch(_CLAIM_OWNERS_SQL, ids, sites, requests, times)
        owners = {row["id"]: row["site_id"] for row in rows}
        return [owners.get(item[0]) for item in items]


class Outcomes:
    """Writes and reads of ``blog_generations``; every method is one statement."""

    pool: asyncpg.Pool  # provided by store.database.Database
    _owners: _OwnerClaims | None = None

    async def upsert_outcomes(self, rows: Sequence[OutcomeRow]) -> int:
        """Write a batch of events; returns the number of rows inserted or changed (see store_outcomes)."""
        return (await self.store_outcomes(rows)).changed

    async def store_outcomes(self, rows: Sequence[OutcomeRow]) -> OutcomeWrite:
        """Write a batch of events in one statement (two if one id comes with two sites).

        Forward only: status/stage/rank move forward, never back; later stages do not erase
        earlier values (COALESCE); a late earlier-stage event only fills NULL columns and
        may pull created_at back to the earliest event time. drafted_at / illustrated_at /
        finished_at come from the event time of that stage (finished_at: final statuses).
        An event whose request id belongs to another site writes nothing and is returned
        in ``foreign``.
        """
        changed, foreign = 0, set()
        for part in _one_site_per_id(rows):
            records = merge_outcomes(part)
            if not records:
                continue
            columns: list[list[Any]] = [[] for _ in _UPSERT_COLUMNS]
            for rec in records:
                for values, name in zip(columns, _UPSERT_COLUMNS):
                    value = rec[name]
                    if name == "request" and value is not None:
                        value = dump_json(value)  # sent as text[], cast to jsonb in SQL
                    values.append(value)
            result = await self.pool.fetchrow(_UPSERT_OUTCOMES_SQL, *columns)
            changed += result["changed"]
            sites = {rec["id"]: rec["site_id"] for rec in records}
            foreign.update((request_id, sites[request_id]) for request_id in result["foreign_ids"])
        return OutcomeWrite(changed, frozenset(foreign))

    async def request_owner(
        self, request_id: str, site_id: str, *, request: dict[str, Any] | None = None, at: datetime | None = None
    ) -> str:
        """The site ``request_id`` belongs to; claimed for ``site_id`` if the id has no row yet.

        The claim is the PENDING row the sink would write for the request, so whichever
        comes first (a stage or the sink), the first site to use an id owns it. The calls of
        concurrent stage events share one statement (a new request's first stage asked twice).
        """
        batch = self._owners
        if batch is None or batch.pool is not self.pool:  # a new pool after a restart
            batch = self._owners = _OwnerClaims(self.pool)
        owner = await batch((request_id, site_id, None if request is None else dump_json(request), at))
        if owner is None:  # someone else's insert won the race: a fresh statement sees it
            owner = await self.pool.fetchval("SELECT site_id FROM blog_generations WHERE id = $1", request_id)
        return owner

    async def request_sites(self, request_ids: Sequence[str]) -> dict[str, str]:
        """request id -> its site, for those of ``request_ids`` that have a row."""
        records = await self.pool.fetch(
            "SELECT id, site_id FROM blog_generations WHERE id = ANY($1::text[])", list(request_ids)
        )
        return {r["id"]: r["site_id"] for r in records}

    async def record_rejected(self, request_id: str, site_id: str, error: str) -> bool:
        """A FAILED row for input that was refused, only if the id has no row yet (True: written).

        Refused input never changes an existing request, of its own site or another's.
        """
        status = await self.pool.execute(
            """
            INSERT INTO blog_generations (id, site_id, status, stage, stage_rank, error, finished_at)
            VALUES ($1, $2, 'FAILED', 'failed', 3, $3, now())
            ON CONFLICT (id) DO NOTHING
            """,
            request_id, site_id, error,
        )
        return status != "INSERT 0 0"

    # --- reads for health / intake ----------------------------------------------------------

    async def status_counts(self) -> dict[str, int]:
        records = await self.pool.fetch("SELECT status, COUNT(*) AS n FROM blog_generations GROUP BY status")
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in records})
        return counts

    async def pending_bulk(self) -> int:
        """PENDING requests of the bulk lane (the intake counts them apart from the interactive ones)."""
        return int(await self.pool.fetchval(
            "SELECT count(*) FROM blog_generations WHERE status = 'PENDING' AND request->>'priority' = 'bulk'"
        ))

    async def health(self) -> HealthFigures:
        # The seed's three queries, one round trip; separate sub-selects so each can use
        # its index (status, created_at) / the partial finished_at index.
        record = await self.pool.fetchrow(
            """
            SELECT
              (SELECT COUNT(*) FROM blog_generations WHERE status = 'PENDING') AS queue_size,
              (SELECT COUNT(*) FROM blog_generations
                 WHERE status = 'FAILED' AND created_at > NOW() - INTERVAL '1 hour') AS errors_last_hour,
              (SELECT COUNT(*) FROM blog_generations
                 WHERE status = 'DONE' AND finished_at > NOW() - INTERVAL '1 hour') AS completed_last_hour
            """
        )
        completed = int(record["completed_last_hour"])
        return HealthFigures(
            queue_size=int(record["queue_size"]),
            errors_last_hour=int(record["errors_last_hour"]),
            completed_last_hour=completed,
            blogs_per_minute=completed / 60.0,
        )

    async def failed_request_ids(self, site_id: str | None = None, since: timedelta | None = None) -> list[str]:
        """Ids of FAILED requests (and of those the seed's retry statement reset, RETRYABLE), oldest first: of
        one site (None: every site), created within ``since`` (None: any time; the seed's statement takes 1 h)."""
        records = await self.pool.fetch(
            f"SELECT id FROM blog_generations WHERE {RETRYABLE}"
            " AND ($1::text IS NULL OR site_id = $1)"
            " AND ($2::interval IS NULL OR created_at > now() - $2::interval)"
            " ORDER BY created_at, id",
            site_id, since,
        )
        return [r["id"] for r in records]

    async def recent_errors(self, limit: int = 10) -> list[ErrorRow]:
        records = await self.pool.fetch(
            "SELECT id, error, created_at FROM blog_generations WHERE status = 'FAILED' "
            "ORDER BY created_at DESC LIMIT $1",
            int(limit),
        )
        return [ErrorRow(r["id"], r["error"], r["created_at"]) for r in records]

    async def get_generation(self, request_id: str) -> dict[str, Any] | None:
        record = await self.pool.fetchrow("SELECT * FROM blog_generations WHERE id = $1", request_id)
        return dict(record) if record is not None else None

    async def list_site_generations(
        self, site_id: str, *, limit: int, after_id: str | None = None
    ) -> list[dict[str, Any]]:
        """A site's generations, newest first, keyset-paged by (created_at, id).

        ``after_id`` is the last id of the previous page; an id that is unknown or belongs
        to another site yields an empty page.
        """
        if limit <= 0:
            raise ValueError("limit must be > 0")
        records = await self.pool.fetch(
            """
            SELECT g.* FROM blog_generations g
            WHERE g.site_id = $1
              AND ($3::text IS NULL OR (g.created_at, g.id) < (
                    SELECT c.created_at, c.id FROM blog_generations c WHERE c.id = $3 AND c.site_id = $1))
            ORDER BY g.created_at DESC, g.id DESC
            LIMIT $2
            """,
            site_id, int(limit), after_id,
        )
        return [dict(r) for r in records]

    async def pending_by_site(self) -> dict[str, int]:
        records = await self.pool.fetch(
            "SELECT site_id, COUNT(*) AS n FROM blog_generations WHERE status = 'PENDING' GROUP BY site_id"
        )
        return {r["site_id"]: int(r["n"]) for r in records}

    async def pending_snapshot(self, ids: list[str]) -> tuple[dict[str, int], dict[str, int], set[str]]:
        """(interactive PENDING rows per site, bulk ones per site, those of ``ids`` that already exist),
        in one round trip.

        Sites without a PENDING row are absent from the dicts; unknown ids are absent from the set.
        """
        records = await self.pool.fetch(_PENDING_SNAPSHOT_SQL, ids)
        by_site: dict[str, int] = {}
        bulk_by_site: dict[str, int] = {}
        for r in records:
            if r["id"] is None:
                (bulk_by_site if r["bulk"] else by_site)[r["site_id"]] = r["n"]
        return by_site, bulk_by_site, {r["id"] for r in records if r["id"] is not None}
