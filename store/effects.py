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
    """

    state: EffectState
    payload: dict[str, Any] | None = None
    claimed_until: datetime | None = None


# --- the methods (mixed into store.database.Database) -----------------------------------


class EffectLedger:
    """Claim, renew, complete or release one (request, stage) effect."""

    pool: asyncpg.Pool  # provided by store.database.Database

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
                  WHERE s.status = 'claimed' AND s.claimed_until < now() AND s.site_id = EXCLUDED.site_id
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
                SELECT status, payload, claimed_until, claimed_until > now() AS live, site_id
                FROM stage_outputs WHERE request_id = $1 AND stage = $2
                """,
                request_id, stage,
            )
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
                WHERE s.status = 'claimed' AND s.site_id = EXCLUDED.site_id
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
