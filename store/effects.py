"""The effect ledger: ``stage_outputs`` rows make paid or visible effects happen once.

An OpenAI article, a Replicate image, a Wix post: each happens once per (request, stage).
Claim with a lease, do the effect, complete with its payload; a replay reuses the stored
payload instead of paying again. An effect belongs to the site that claimed it: another
site using the same request id gets ``foreign``, never the payload.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from .coalesced import Coalesced
from .outcomes import dump_json

__all__ = ["EffectClaim", "EffectLedger", "EffectState"]

log = logging.getLogger(__name__)

EffectState = Literal["acquired", "done", "busy", "foreign"]




@dataclass(frozen=True)
class EffectClaim:
    """Result of ``claim_effect``.

    acquired: you hold the lease until ``claimed_until``; do the effect, then
              ``complete_effect`` (or ``release_effect`` if it failed).
    done:     the effect already happened; reuse ``payload``, do not pay again.
    busy:     another worker holds a live lease until ``claimed_until``; check again later.
    foreign:  the request id's effect belongs to another site: do nothing with it.

    taken_over: acquired from a claim whose lease ran out (its worker died or lost Postgres mid-effect): the
    effect may have been done, or paid, with its result never recorded.
    """

    state: EffectState
    payload: dict[str, Any] | None = None
    claimed_until: datetime | None = None
    taken_over: bool = False


_Key = tuple[str, str]  # (request_id, stage)


def _first_of_each_key(items: list[tuple]) -> list[tuple]:
    """Items with distinct (request, stage) keys, sorted (one statement may touch a row only once;
    the same order in every worker keeps row locks from deadlocking)."""
    seen: dict[_Key, tuple] = {}
    for item in items:
        seen.setdefault((item[0], item[1]), item)
    return [seen[key] for key in sorted(seen)]


def _columns(items: list[tuple]) -> list[list]:
    return [list(column) for column in zip(*items)]


def outlived_restart(renewed_at: str, lease: str) -> str:
    """SQL: a lapsed claim, last renewed at `renewed_at`, may be taken over by one of `lease` (an interval).

    With Postgres away longer than a lease every claim lapsed, live owners' too: one that
    paid the provider meanwhile renews (or records) as soon as the server is back, and a
    taker that came first would pay again. So a claim last renewed before the server
    started is taken over only once it has been up for the taker's lease. A restart is what
    this can see; a server that only could not be reached (a network split) looks like a
    dead owner, and the lease decides as before (docs/architecture.md). Used by the effect
    ledger here and by the bulk lane's batch claims (store/batches.py).
    """
    return f"({renewed_at} >= pg_postmaster_start_time() OR now() >= pg_postmaster_start_time() + {lease})"


# In the claim's ON CONFLICT: `s` the row, EXCLUDED the new claim, whose lease is EXCLUDED.claimed_until - now().
_OUTLIVED_RESTART = outlived_restart("s.updated_at", "(EXCLUDED.claimed_until - now())")


async def _claim_many(pool: asyncpg.Pool, items: list[tuple]) -> list[tuple[datetime, bool] | None]:
    """(request_id, stage, site_id, owner, lease_seconds) -> (claimed_until, taken over) when acquired, else None.

    Insert a fresh claim, or take over an expired one; a live claim or a done effect
    makes the WHERE false and nothing comes back. Of several items with one key, only
    the first is tried (the others find its claim, as they would one statement later).

    A claim last renewed before Postgres (re)started ran out while nobody could renew
    it: its owner may be alive, paid, and waiting to record the answer. It is taken
    over only once the server has been up for a whole lease (the taker's), time for a
    live owner's renewals (every lease / 3) to find it again. See `_OUTLIVED_RESTART`.
    """
    distinct = _first_of_each_key(items)
    records = await pool.fetch(
        """
        INSERT INTO stage_outputs AS s (request_id, stage, site_id, status, claimed_by, claimed_until)
        SELECT i.request_id, i.stage, i.site_id, 'claimed', i.owner, now() + i.lease * interval '1 second'
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[]) AS i(request_id, stage, site_id, owner, lease)
        ON CONFLICT (request_id, stage) DO UPDATE
          SET claimed_by = EXCLUDED.claimed_by, claimed_until = EXCLUDED.claimed_until, updated_at = now()
          WHERE s.status = 'claimed' AND s.claimed_until < now() AND s.site_id = EXCLUDED.site_id
            AND """ + _OUTLIVED_RESTART + """
        RETURNING s.request_id, s.stage, s.claimed_by, s.claimed_until, s.xmax::text <> '0' AS taken_over
        """,  # xmax is set on a row the ON CONFLICT branch updated (an expired claim taken over), 0 on an insert
        *_columns(distinct),
    )
    won = {(r["request_id"], r["stage"], r["claimed_by"]): (r["claimed_until"], r["taken_over"]) for r in records}
    tried = {id(item) for item in distinct}
    return [won.get((item[0], item[1], item[3])) if id(item) in tried else None for item in items]


async def _read_many(pool: asyncpg.Pool, keys: list[_Key]) -> list[asyncpg.Record | None]:
    """The ledger rows of (request_id, stage) keys, None for a key with no row."""
    distinct = sorted(set(keys))
    records = await pool.fetch(
        """
        SELECT s.request_id, s.stage, s.status, s.payload, s.claimed_until, s.claimed_until > now() AS live, s.site_id
        FROM stage_outputs s JOIN unnest($1::text[], $2::text[]) AS i(request_id, stage) USING (request_id, stage)
        """,
        *_columns(distinct),
    )
    found = {(r["request_id"], r["stage"]): r for r in records}
    return [found.get(key) for key in keys]


async def _complete_many(pool: asyncpg.Pool, items: list[tuple]) -> list[asyncpg.Record]:
    """(request_id, stage, site_id, payload JSON text, owner) -> (prev_status, prev_owner, written) each.

    One statement may write a row only once: a second completion of the same key in a
    batch (never seen in practice) waits for the next statement.
    """
    distinct = _first_of_each_key(items)
    records = await pool.fetch(
        """
        WITH i AS (
          SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
            AS i(request_id, stage, site_id, payload, owner)
        ), prev AS (
          SELECT s.request_id, s.stage, s.status, s.claimed_by FROM stage_outputs s JOIN i USING (request_id, stage)
        ), up AS (
          INSERT INTO stage_outputs AS s (request_id, stage, site_id, status, payload, claimed_by)
          SELECT request_id, stage, site_id, 'done', payload::jsonb, owner FROM i
          ON CONFLICT (request_id, stage) DO UPDATE
            SET status = 'done', payload = EXCLUDED.payload, claimed_by = EXCLUDED.claimed_by,
                claimed_until = NULL, updated_at = now()
            WHERE s.status = 'claimed' AND s.site_id = EXCLUDED.site_id
          RETURNING s.request_id, s.stage
        )
        SELECT i.request_id, i.stage, i.owner, prev.status AS prev_status, prev.claimed_by AS prev_owner,
               up.request_id IS NOT NULL AS written
        FROM i LEFT JOIN prev USING (request_id, stage) LEFT JOIN up USING (request_id, stage)
        """,
        *_columns(distinct),
    )
    answered = {(r["request_id"], r["stage"], r["owner"]): r for r in records}
    written = {id(item) for item in distinct}
    return [answered[(item[0], item[1], item[4])] if id(item) in written else (await _complete_many(pool, [item]))[0]
            for item in items]


async def _extend_many(pool: asyncpg.Pool, items: list[tuple]) -> list[bool]:
    """(request_id, stage, owner, lease_seconds) -> whether that live claim was ours and is renewed."""
    records = await pool.fetch(
        """
        UPDATE stage_outputs s SET claimed_until = now() + i.lease * interval '1 second', updated_at = now()
        FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[]) AS i(request_id, stage, owner, lease)
        WHERE s.request_id = i.request_id AND s.stage = i.stage AND s.status = 'claimed' AND s.claimed_by = i.owner
        RETURNING s.request_id, s.stage, s.claimed_by
        """,
        *_columns(sorted(items)),
    )
    renewed = {(r["request_id"], r["stage"], r["claimed_by"]) for r in records}
    return [item[:3] in renewed for item in items]


class _LedgerBatches:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.claim = Coalesced(lambda items: _claim_many(pool, items))
        self.read = Coalesced(lambda keys: _read_many(pool, keys))
        self.complete = Coalesced(lambda items: _complete_many(pool, items))
        self.extend = Coalesced(lambda items: _extend_many(pool, items))


# --- the methods (mixed into store.database.Database) -----------------------------------


class EffectLedger:
    """Claim, renew, complete or release one (request, stage) effect.

    Claims, their reads and completions of concurrent callers share statements
    (`Coalesced`); each caller still gets the answer its own statement would have given.
    """

    pool: asyncpg.Pool  # provided by store.database.Database
    _ledger: _LedgerBatches | None = None

    def _batches(self) -> _LedgerBatches:
        pool = self.pool
        if self._ledger is None or self._ledger.pool is not pool:  # a new pool after a restart
            self._ledger = _LedgerBatches(pool)
        return self._ledger

    async def claim_effect(
        self, request_id: str, stage: str, site_id: str, *, owner: str, lease_seconds: float
    ) -> EffectClaim:
        """Claim the right to perform (request_id, stage) once.

        ``owner`` must be unique per attempt (e.g. worker id + uuid): claims are not
        re-entrant, so two attempts sharing an owner would still exclude each other.
        """
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        batches = self._batches()
        # A few rounds only cover the races between the claim and the read (the row was
        # released, or its lease ran out, in between); each round is one statement + a read.
        claimed_until: datetime | None = None
        for _ in range(3):
            # Atomic: insert a fresh claim, or take over an expired one (see _claim_many).
            won = await batches.claim((request_id, stage, site_id, owner, float(lease_seconds)))
            if won is not None:
                return EffectClaim("acquired", None, won[0], taken_over=won[1])
            # A separate statement (fresh snapshot): it sees the row that blocked us even
            # if its writer committed after our claim statement started.
            record = await batches.read((request_id, stage))
            if record is None:
                continue  # released in between: claim again
            if record["site_id"] != site_id:
                return EffectClaim("foreign", None, None)
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
        record = await self._batches().complete((request_id, stage, site_id, dump_json(payload), owner))
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
        return await self._batches().extend((request_id, stage, owner, float(lease_seconds)))

    async def extend_effects(self, claims: list[tuple[str, str, str]], *, lease_seconds: float) -> list[bool]:
        """Renew many live claims, (request_id, stage, owner) each, in one statement (a worker's renewer)."""
        return await _extend_many(self.pool, [(r, s, o, float(lease_seconds)) for r, s, o in claims])

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

    async def lapse_effect(self, request_id: str, stage: str, *, owner: str) -> None:
        """Give up our claim after a failed effect that may have happened all the same (a paid answer lost):
        its lease ends now, so the next try claims at once and is told it took it over (`taken_over`)."""
        await self.pool.execute(
            "UPDATE stage_outputs SET claimed_until = now() - interval '1 millisecond', updated_at = now() "
            "WHERE request_id = $1 AND stage = $2 AND status = 'claimed' AND claimed_by = $3",
            request_id, stage, owner,
        )

    async def get_effect(self, request_id: str, stage: str) -> dict[str, Any] | None:
        """The payload of a done effect, None if it has not happened (yet).

        Read with the claims' reads (one statement for concurrent callers): publish asks once per post.
        """
        record = await self._batches().read((request_id, stage))
        return record["payload"] if record is not None and record["status"] == "done" else None
