"""Postgres connector for blogstream (asyncpg).

Three jobs, one pool per process:

* **Outcome sink** - ``upsert_outcomes`` writes batches of pipeline events into
  ``blog_generations`` in one round trip. Events arrive at least once and out of order
  across topics, so the upsert is *forward only*: a row's status/stage never moves back
  (DONE never becomes PENDING again), and a late or replayed event may only fill columns
  that are still NULL.
* **Sites registry** - per-site settings (Wix credentials, weight, limits, paused) that
  can change at runtime; ``SiteCache`` serves them with a short TTL so a change is seen
  within seconds without one query per event.
* **Effect ledger** - ``stage_outputs`` rows make paid or visible effects (OpenAI article,
  Replicate image, Wix post) happen once per (request, stage): claim with a lease, do
  the effect, complete with its payload; a replay reuses the stored payload.

Plus the read queries behind the health endpoint and the intake API (same semantics as
the seed's SQL, which still runs unchanged against the table).

Secrets: the DSN password never appears in an error raised here, and ``Site.__repr__``
masks the Wix API key, so neither leaks into logs.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote, urlsplit

import asyncpg

log = logging.getLogger(__name__)

# --- vocabulary --------------------------------------------------------------------

STATUSES = ("PENDING", "DONE", "FAILED", "CANCELLED")
FINAL_STATUSES = frozenset({"DONE", "FAILED", "CANCELLED"})

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

EffectState = Literal["acquired", "done", "busy"]


# --- errors and secrets ------------------------------------------------------------


class DatabaseError(RuntimeError):
    """Raised by the connector itself (not by asyncpg); its message is free of secrets."""


def mask_dsn(dsn: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db (also ?password=)."""
    # Greedy up to the last "@": a password may itself contain "@" or "/" (over-masking an
    # odd query string is harmless, under-masking a password is not).
    masked = re.sub(r"(://[^:/@?#]*):.*@", r"\1:***@", dsn)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", masked)


def _scrub(text: str, dsn: str) -> str:
    """Remove the DSN and its password from a message we did not write (driver errors)."""
    text = text.replace(dsn, mask_dsn(dsn))
    try:
        password = urlsplit(dsn).password
    except ValueError:  # unparsable DSN: the regex below still masks user:pw@ forms
        password = None
    for secret in {password, unquote(password) if password else None} - {None, ""}:
        text = text.replace(secret, "***")  # type: ignore[arg-type]
    return mask_dsn(text)


# --- records -------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Site:
    site_id: str
    name: str = ""
    wix_api_key: str = ""
    wix_member_id: str | None = None
    weight: float = 1.0
    max_in_flight: int = 20
    max_queued: int = 1000
    paused: bool = False

    def __repr__(self) -> str:
        # Sites get logged (scheduler decisions, errors); the Wix key must never be.
        key = "'***'" if self.wix_api_key else "''"
        return (
            f"Site(site_id={self.site_id!r}, name={self.name!r}, wix_api_key={key}, "
            f"wix_member_id={self.wix_member_id!r}, weight={self.weight!r}, "
            f"max_in_flight={self.max_in_flight!r}, max_queued={self.max_queued!r}, "
            f"paused={self.paused!r})"
        )

    __str__ = __repr__


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
class EffectClaim:
    """Result of ``claim_effect``.

    acquired: you hold the lease until ``claimed_until``; do the effect, then
              ``complete_effect`` (or ``release_effect`` if it failed).
    done:     the effect already happened; reuse ``payload``, do not pay again.
    busy:     another worker holds a live lease until ``claimed_until``; check again later.
    """

    state: EffectState
    payload: dict[str, Any] | None = None
    claimed_until: datetime | None = None


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

# Does the incoming row move the stored one forward? A higher rank does (unless it would
# turn a final status back into PENDING); at equal rank only PENDING -> final does, which
# is how a row the seed's retry UPDATE reset to PENDING (rank 3) can finish again.
_ADVANCES = (
    "((EXCLUDED.stage_rank > b.stage_rank AND (b.status = 'PENDING' OR EXCLUDED.status <> 'PENDING'))"
    " OR (EXCLUDED.stage_rank = b.stage_rank AND b.status = 'PENDING' AND EXCLUDED.status <> 'PENDING'))"
)


def _advances(old_rank: int, old_status: str, new_rank: int, new_status: str) -> bool:
    """Python twin of _ADVANCES, used to merge one batch exactly as the database would."""
    if new_rank > old_rank:
        return old_status == "PENDING" or new_status != "PENDING"
    return new_rank == old_rank and old_status == "PENDING" and new_status != "PENDING"


def _build_upsert_sql() -> str:
    sets = [
        *(f"{c} = CASE WHEN {_ADVANCES} THEN EXCLUDED.{c} ELSE b.{c} END" for c in ("status", "stage", "stage_rank")),
        "request = COALESCE(b.request, EXCLUDED.request)",  # the first request json stays
        *(
            f"{c} = CASE WHEN {_ADVANCES} THEN COALESCE(EXCLUDED.{c}, b.{c}) ELSE COALESCE(b.{c}, EXCLUDED.{c}) END"
            for c in _FOLDED
        ),
        "attempts = GREATEST(b.attempts, EXCLUDED.attempts)",
        "created_at = LEAST(b.created_at, EXCLUDED.created_at)",  # the earliest event seen
        "updated_at = now()",
    ]
    # Skip the write entirely when the event changes nothing (the common replay case):
    # no dead tuple, no WAL, and the returned count means "rows that changed".
    changes = [
        _ADVANCES,
        "EXCLUDED.attempts > b.attempts",
        "EXCLUDED.created_at < b.created_at",
        *(f"(b.{c} IS NULL AND EXCLUDED.{c} IS NOT NULL)" for c in ("request", *_FOLDED)),
    ]
    sep = ",\n  "
    return f"""
INSERT INTO blog_generations AS b (
  id, site_id, status, stage, stage_rank, request, title, post_id, post_url, image_url, error,
  attempts, prompt_tokens, completion_tokens, created_at, updated_at, drafted_at, illustrated_at, finished_at)
SELECT u.id, u.site_id, u.status, u.stage, u.stage_rank, u.request::jsonb, u.title, u.post_id, u.post_url,
       u.image_url, u.error, u.attempts, u.prompt_tokens, u.completion_tokens, u.created_at, now(),
       u.drafted_at, u.illustrated_at, u.finished_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::int4[], $13::int4[], $14::int4[], $15::timestamptz[],
            $16::timestamptz[], $17::timestamptz[], $18::timestamptz[])
     AS u(id, site_id, status, stage, stage_rank, request, title, post_id, post_url, image_url, error,
          attempts, prompt_tokens, completion_tokens, created_at, drafted_at, illustrated_at, finished_at)
ON CONFLICT (id) DO UPDATE SET
  {sep.join(sets)}
WHERE {(chr(10) + '   OR ').join(changes)}
"""


_UPSERT_OUTCOMES_SQL = _build_upsert_sql()

# Order of the unnest() arrays above.
_UPSERT_COLUMNS = (
    "id", "site_id", "status", "stage", "stage_rank", "request", "title", "post_id", "post_url",
    "image_url", "error", "attempts", "prompt_tokens", "completion_tokens", "created_at",
    "drafted_at", "illustrated_at", "finished_at",
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
    }


def _fold(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge ``new`` into ``old`` in place with the same rules as the ON CONFLICT clause."""
    adv = _advances(old["stage_rank"], old["status"], new["stage_rank"], new["status"])
    if adv:
        old["status"], old["stage"], old["stage_rank"] = new["status"], new["stage"], new["stage_rank"]
    if old["request"] is None:
        old["request"] = new["request"]
    for c in _FOLDED:
        first, second = (new[c], old[c]) if adv else (old[c], new[c])
        old[c] = first if first is not None else second
    old["attempts"] = max(old["attempts"], new["attempts"])
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


def _json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- the database ----------------------------------------------------------------------

_SITE_COLUMNS = "site_id, name, wix_api_key, wix_member_id, weight, max_in_flight, max_queued, paused"


def _site(record: asyncpg.Record) -> Site:
    return Site(
        site_id=record["site_id"],
        name=record["name"],
        wix_api_key=record["wix_api_key"],
        wix_member_id=record["wix_member_id"],
        weight=float(record["weight"]),
        max_in_flight=int(record["max_in_flight"]),
        max_queued=int(record["max_queued"]),
        paused=bool(record["paused"]),
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb in and out as Python objects (asyncpg's default is str).
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, schema="pg_catalog", encoder=_json_dumps, decoder=json.loads, format="text"
        )


class Database:
    """One asyncpg pool per process; every method is a single short query or statement."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 30.0,
        application_name: str = "blogstream",
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._application_name = application_name
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"Database({mask_dsn(self._dsn)!r}, started={self._pool is not None})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                command_timeout=self._command_timeout,
                init=_init_connection,
                server_settings={"application_name": self._application_name},
            )
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            # The driver's message may quote the DSN; ours names the database without the
            # password. `from None`: the original (unscrubbed) error is not chained into logs.
            raise DatabaseError(
                f"cannot connect to {mask_dsn(self._dsn)}: {type(exc).__name__}: {_scrub(str(exc), self._dsn)}"
            ) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseError("Database.start() has not been awaited")
        return self._pool

    # --- outcomes (the sink) -------------------------------------------------------------

    async def upsert_outcomes(self, rows: Sequence[OutcomeRow]) -> int:
        """Write a batch of events in one statement; returns the number of rows inserted or changed.

        Forward only: status/stage/rank move forward, never back; later stages do not erase
        earlier values (COALESCE); a late earlier-stage event only fills NULL columns and
        may pull created_at back to the earliest event time. drafted_at / illustrated_at /
        finished_at come from the event time of that stage (finished_at: final statuses).
        """
        records = merge_outcomes(rows)
        if not records:
            return 0
        columns: list[list[Any]] = [[] for _ in _UPSERT_COLUMNS]
        for rec in records:
            for values, name in zip(columns, _UPSERT_COLUMNS):
                value = rec[name]
                if name == "request" and value is not None:
                    value = _json_dumps(value)  # sent as text[], cast to jsonb in SQL
                values.append(value)
        status = await self.pool.execute(_UPSERT_OUTCOMES_SQL, *columns)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    # --- sites registry ------------------------------------------------------------------

    async def get_site(self, site_id: str) -> Site | None:
        """Fresh read (use SiteCache on hot paths)."""
        record = await self.pool.fetchrow(f"SELECT {_SITE_COLUMNS} FROM sites WHERE site_id = $1", site_id)
        return _site(record) if record is not None else None

    async def upsert_site(self, site: Site) -> None:
        _check_controls(site.weight, site.max_in_flight, site.max_queued)
        await self.pool.execute(
            f"""
            INSERT INTO sites ({_SITE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (site_id) DO UPDATE SET
              name = EXCLUDED.name, wix_api_key = EXCLUDED.wix_api_key, wix_member_id = EXCLUDED.wix_member_id,
              weight = EXCLUDED.weight, max_in_flight = EXCLUDED.max_in_flight,
              max_queued = EXCLUDED.max_queued, paused = EXCLUDED.paused, updated_at = now()
            """,
            site.site_id, site.name, site.wix_api_key, site.wix_member_id,
            float(site.weight), int(site.max_in_flight), int(site.max_queued), bool(site.paused),
        )

    async def update_site_controls(
        self,
        site_id: str,
        *,
        paused: bool | None = None,
        weight: float | None = None,
        max_in_flight: int | None = None,
        max_queued: int | None = None,
    ) -> Site | None:
        """Change only the given controls; returns the updated site, None if it does not exist."""
        _check_controls(weight, max_in_flight, max_queued)
        record = await self.pool.fetchrow(
            f"""
            UPDATE sites SET
              paused = COALESCE($2, paused), weight = COALESCE($3, weight),
              max_in_flight = COALESCE($4, max_in_flight), max_queued = COALESCE($5, max_queued),
              updated_at = now()
            WHERE site_id = $1
            RETURNING {_SITE_COLUMNS}
            """,
            site_id, paused,
            None if weight is None else float(weight),
            None if max_in_flight is None else int(max_in_flight),
            None if max_queued is None else int(max_queued),
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
        """FAILED -> PENDING for a retry: returns (the stored request, the error it had).

        The row goes back to stage `requested`, so the sink's forward-only rule
        lets the retry's events move it on again. None: the row is not FAILED,
        or holds no request to send again (it never was a valid request).
        """
        record = await self.pool.fetchrow(
            """
            UPDATE blog_generations g
               SET status = 'PENDING', stage = 'requested', stage_rank = 0, error = NULL,
                   finished_at = NULL, updated_at = now()
              FROM (SELECT id, error FROM blog_generations
                     WHERE id = $1 AND status = 'FAILED' AND request IS NOT NULL FOR UPDATE) old
             WHERE g.id = old.id
            RETURNING g.request, old.error
            """,
            request_id,
        )
        return None if record is None else (record["request"], record["error"])

    async def restore_failed(self, request_id: str, error: str | None) -> None:
        """Undo `reopen_failed` when the retry could not be sent (the row is FAILED again)."""
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
        records = await self.pool.fetch(f"SELECT {_SITE_COLUMNS} FROM sites ORDER BY site_id")
        return [_site(r) for r in records]

    # --- effect ledger ---------------------------------------------------------------------

    async def claim_effect(
        self, request_id: str, stage: str, site_id: str, *, owner: str, lease_seconds: float
    ) -> EffectClaim:
        """Claim the right to perform (request_id, stage) once.

        ``owner`` must be unique per attempt (e.g. worker id + uuid): claims are not
        re-entrant, so two attempts sharing an owner would still exclude each other.
        """
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        # A few rounds only cover the races between the claim and the read (the row was
        # released, or its lease ran out, in between); each round is one statement + a read.
        claimed_until: datetime | None = None
        for _ in range(3):
            # Atomic: insert a fresh claim, or take over an expired one; a live claim or a
            # done effect makes the WHERE false and nothing is returned.
            claimed_until = await self.pool.fetchval(
                """
                INSERT INTO stage_outputs AS s (request_id, stage, site_id, status, claimed_by, claimed_until)
                VALUES ($1, $2, $3, 'claimed', $4, now() + $5::float8 * interval '1 second')
                ON CONFLICT (request_id, stage) DO UPDATE
                  SET claimed_by = EXCLUDED.claimed_by, claimed_until = EXCLUDED.claimed_until, updated_at = now()
                  WHERE s.status = 'claimed' AND s.claimed_until < now()
                RETURNING s.claimed_until
                """,
                request_id, stage, site_id, owner, float(lease_seconds),
            )
            if claimed_until is not None:
                return EffectClaim("acquired", None, claimed_until)
            # A separate statement (fresh snapshot): it sees the row that blocked us even
            # if its writer committed after our claim statement started.
            record = await self.pool.fetchrow(
                """
                SELECT status, payload, claimed_until, claimed_until > now() AS live
                FROM stage_outputs WHERE request_id = $1 AND stage = $2
                """,
                request_id, stage,
            )
            if record is None:
                continue  # released in between: claim again
            if record["status"] == "done":
                return EffectClaim("done", record["payload"], None)
            claimed_until = record["claimed_until"]
            if record["live"]:
                return EffectClaim("busy", None, claimed_until)
            # expired in between: try to take it over
        return EffectClaim("busy", None, claimed_until)

    async def complete_effect(
        self, request_id: str, stage: str, site_id: str, payload: dict[str, Any], *, owner: str
    ) -> None:
        """Record that the effect happened (idempotent; an already-done effect keeps its first payload).

        Accepted even if our lease was taken over meanwhile: the effect *did* happen, and
        recording it is what stops a further retry from paying a third time.
        """
        if not isinstance(payload, dict):
            raise TypeError("payload must be a dict")
        record = await self.pool.fetchrow(
            """
            WITH prev AS (
              SELECT status, claimed_by FROM stage_outputs WHERE request_id = $1 AND stage = $2
            ), up AS (
              INSERT INTO stage_outputs AS s (request_id, stage, site_id, status, payload, claimed_by)
              VALUES ($1, $2, $3, 'done', $4::jsonb, $5)
              ON CONFLICT (request_id, stage) DO UPDATE
                SET status = 'done', payload = EXCLUDED.payload, claimed_by = EXCLUDED.claimed_by,
                    claimed_until = NULL, updated_at = now()
                WHERE s.status = 'claimed'
              RETURNING 1
            )
            SELECT (SELECT status FROM prev) AS prev_status, (SELECT claimed_by FROM prev) AS prev_owner,
                   EXISTS (SELECT 1 FROM up) AS written
            """,
            request_id, stage, site_id, payload, owner,
        )
        # prev is read from the statement's snapshot: good enough for these diagnostics.
        if record["written"] and record["prev_status"] == "claimed" and record["prev_owner"] != owner:
            log.warning(
                "effect %s/%s completed by %s after its lease passed to %s: it may have run twice",
                request_id, stage, owner, record["prev_owner"],
            )
        elif not record["written"]:
            log.info("effect %s/%s was already done; kept the first payload", request_id, stage)

    async def extend_effect(self, request_id: str, stage: str, *, owner: str, lease_seconds: float) -> bool:
        """Renew our live claim while the effect is still under way (False: it is not ours any more)."""
        status = await self.pool.execute(
            """
            UPDATE stage_outputs SET claimed_until = now() + $4::float8 * interval '1 second', updated_at = now()
            WHERE request_id = $1 AND stage = $2 AND status = 'claimed' AND claimed_by = $3
            """,
            request_id, stage, owner, float(lease_seconds),
        )
        return status != "UPDATE 0"

    async def release_effect(self, request_id: str, stage: str, *, owner: str) -> None:
        """Give up our claim after a failed effect so the next try can claim at once.

        Only our own live or expired claim is removed; a done effect or a claim another
        worker has taken over is left alone.
        """
        status = await self.pool.execute(
            "DELETE FROM stage_outputs WHERE request_id = $1 AND stage = $2 AND status = 'claimed' AND claimed_by = $3",
            request_id, stage, owner,
        )
        if status == "DELETE 0":
            log.debug("release of %s/%s by %s found no claim of its own", request_id, stage, owner)

    async def get_effect(self, request_id: str, stage: str) -> dict[str, Any] | None:
        """The payload of a done effect, None if it has not happened (yet)."""
        return await self.pool.fetchval(
            "SELECT payload FROM stage_outputs WHERE request_id = $1 AND stage = $2 AND status = 'done'",
            request_id, stage,
        )

    # --- reads for health / intake ----------------------------------------------------------

    async def status_counts(self) -> dict[str, int]:
        records = await self.pool.fetch("SELECT status, COUNT(*) AS n FROM blog_generations GROUP BY status")
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: int(r["n"]) for r in records})
        return counts

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


def _check_controls(weight: float | None, max_in_flight: int | None, max_queued: int | None) -> None:
    # The table has CHECKs too; failing here gives the caller a clear ValueError instead.
    if weight is not None and not weight > 0:
        raise ValueError("weight must be > 0")
    if max_in_flight is not None and max_in_flight <= 0:
        raise ValueError("max_in_flight must be > 0")
    if max_queued is not None and max_queued <= 0:
        raise ValueError("max_queued must be > 0")


# --- site cache -----------------------------------------------------------------------------


class SiteCache:
    """``get(site_id)`` served from memory for ``ttl`` seconds.

    Per-site settings (paused, weight, limits, Wix credentials) thus change without a
    restart, within ``ttl``, yet cost no query per event. Unknown sites are cached too
    (as None), and concurrent misses for one site share a single query.
    """

    def __init__(self, db: Database, *, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._db = db
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Site | None]] = {}
        self._loading: dict[str, asyncio.Task[Site | None]] = {}
        self._generation = 0  # bumped by invalidate(): loads started before it are not stored

    async def get(self, site_id: str) -> Site | None:
        entry = self._entries.get(site_id)
        if entry is not None and entry[0] > self._clock():
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
        else:
            self._entries.pop(site_id, None)
            self._loading.pop(site_id, None)

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


__all__ = [
    "Database",
    "DatabaseError",
    "EffectClaim",
    "ErrorRow",
    "HealthFigures",
    "OutcomeRow",
    "Site",
    "SiteCache",
    "STAGE_RANKS",
    "STATUSES",
    "mask_dsn",
    "merge_outcomes",
]
