"""The bulk lane's ledger: requests held for the OpenAI Batch API, and the batches sent.

A bulk request is written here before its event is acked (`hold_batch_line`), so a
restart never loses it. A batch is written (`assemble_batch`: its row and its lines, in
one transaction) before any call, marked `submitting` before the batch is created, and
gets the provider's id after (migration 0007 says why). Every step on a batch happens
under its claim, a short lease like the effect ledger's, so two workers never work on
one batch at once and a dead worker's batch passes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from .costs import _DAY_USD, _MONTH_USD, _RESERVED, _TODAY
from .effects import outlived_restart

__all__ = ["BatchLanes", "BatchRow", "HeldLine"]

HELD = ("queued", "batched")  # states in which the lane still owes the request its article
MAX_POLL_DOUBLINGS = 6  # a batch OpenAI cannot give for now waits at most 2^6 poll intervals between looks

# What a capped site `s` may still spend under its caps: each cap less what it spent in its period, the
# least of them (a NULL cap counts as none: least() skips NULLs), less what its running batches may cost.
_SITE_LEFT = f"least(s.monthly_budget_usd - {_MONTH_USD}, s.daily_budget_usd - {_DAY_USD}) - {_RESERVED}"
# Each queued line of a capped site ($1: the model) with the worst case of the site's queued lines before it
# (queue order) and what the site has left: a line goes into a file only while `before` < `room`.
_SITE_ROOM = f"""
  WITH capped AS (  -- once per site: the sums are not read again for each of its lines
    SELECT s.site_id, {_SITE_LEFT} AS room FROM sites s
     WHERE (s.monthly_budget_usd IS NOT NULL OR s.daily_budget_usd IS NOT NULL)
       AND EXISTS (SELECT 1 FROM openai_batch_lines e WHERE e.site_id = s.site_id AND e.state = 'queued' AND e.model = $1)
  )
  SELECT q.request_id, c.room,
         coalesce(sum(q.max_usd) OVER (PARTITION BY q.site_id ORDER BY q.queued_at, q.request_id
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM openai_batch_lines q JOIN capped c ON c.site_id = q.site_id
   WHERE q.state = 'queued' AND q.model = $1
"""
# All sites' spend today and the worst case of every line in a running batch (the global daily cap's use).
_GLOBAL_USED = f"""
  SELECT coalesce((SELECT usd FROM daily_spend WHERE day = {_TODAY}), 0)
       + coalesce((SELECT sum(max_usd) FROM openai_batch_lines WHERE state = 'batched'), 0)
"""
# The sites of a new batch ($1) whose caps its lines and their running batches now reserve in full: held
# until their batches end and store/costs.py's refresh finds room again (it counts what is reserved).
_HOLD_RESERVED = f"""
  UPDATE sites s
     SET budget_exhausted = CASE WHEN s.monthly_budget_usd - {_MONTH_USD} - {_RESERVED} <= 0 THEN 'month' ELSE 'day' END,
         updated_at = now()
   WHERE s.site_id IN (SELECT site_id FROM openai_batch_lines WHERE batch_key = $1)
     AND s.budget_exhausted IS NULL AND {_SITE_LEFT} <= 0
"""

# claim_batches' rule for a claim that lapsed in a Postgres restart ($2: the taker's lease, seconds).
_OUTLIVED_RESTART = outlived_restart("claimed_at", "make_interval(secs => $2)")


@dataclass(frozen=True)
class BatchRow:
    batch_key: str
    model: str
    state: str
    lines: int
    prompt_tokens: int
    batch_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class HeldLine:
    request_id: str
    site_id: str
    request: dict[str, Any]
    attempts: int
    prompt_tokens: int = 0  # what the line adds to its file's prompt tokens (batched_lines; 0 elsewhere)


def _batch(record: asyncpg.Record) -> BatchRow:
    return BatchRow(record["batch_key"], record["model"], record["state"], record["lines"], record["prompt_tokens"],
                    record["batch_id"], record["created_at"])


class BatchLanes:
    """Mixed into store.database.Database."""

    pool: asyncpg.Pool  # provided by store.database.Database

    # --- lines ------------------------------------------------------------------------
    async def hold_batch_line(
        self, request: dict[str, Any], *, model: str, prompt_tokens: int, size: int, max_usd: Decimal = Decimal(0)
    ) -> str:
        """Hold `request` for a batch (once: a replay changes nothing); returns its line's state.

        'effect' instead when its generate effect is done (written, or cancelled): nothing is held
        then, the stage goes on with the effect. 'foreign' when another site holds a line under this
        request id: nothing is held. One statement: a backfill's burst costs one round trip each.
        """
        state = await self.pool.fetchval(
            """
            WITH done AS (
              SELECT 1 FROM stage_outputs WHERE request_id = $1 AND stage = 'generate' AND status = 'done'
            ), held AS (
              INSERT INTO openai_batch_lines (request_id, site_id, model, request, prompt_tokens, bytes, max_usd)
              SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM done)
              ON CONFLICT (request_id) DO NOTHING
              RETURNING state
            )
            SELECT 'effect' FROM done
            UNION ALL SELECT state FROM held
            UNION ALL SELECT CASE WHEN site_id = $2 THEN state ELSE 'foreign' END
                        FROM openai_batch_lines WHERE request_id = $1
            LIMIT 1
            """,
            request["request_id"], request["site_id"], model, request, prompt_tokens, size, max_usd,
        )
        return str(state)

    async def take_queued_line(self, request_id: str, site_id: str) -> str | None:
        """For a copy of a held request that is not bulk: its queued line leaves the lane ('realtime',
        nothing to send back), so no file carries it; returns the line's state (None: no line).

        'batched': a running batch has it, paid for already. 'foreign': the line is another site's
        (left as it is). Two statements: after the UPDATE waited for a batch being assembled, only a
        new snapshot sees the line it took.
        """
        taken = await self.pool.fetchval(
            """
            UPDATE openai_batch_lines
               SET state = 'realtime', sent_back = true, updated_at = now(),
                   error = 'sent again as an interactive request before its batch'
             WHERE request_id = $1 AND site_id = $2 AND state = 'queued'
            RETURNING state
            """,
            request_id, site_id,
        )
        return taken if taken is not None else await self.batch_line_state(request_id, site_id)

    async def batch_line_state(self, request_id: str, site_id: str | None = None) -> str | None:
        """The line's state; 'foreign' when `site_id` is given and the line is another site's."""
        return await self.pool.fetchval(
            "SELECT CASE WHEN $2::text IS NULL OR site_id = $2 THEN state ELSE 'foreign' END "
            "FROM openai_batch_lines WHERE request_id = $1", request_id, site_id)

    async def end_cancelled_lines(self) -> int:
        """Queued lines whose request was cancelled (its generate effect is done): no file will carry them."""
        status = await self.pool.execute(
            """
            UPDATE openai_batch_lines l SET state = 'cancelled', updated_at = now()
            FROM stage_outputs o
            WHERE l.state = 'queued' AND o.request_id = l.request_id AND o.stage = 'generate' AND o.status = 'done'
            """
        )
        return int(status.split()[-1])

    async def settle_line(self, request_id: str, batch_key: str, state: str, error: str | None = None) -> bool:
        """A batched line's end: written, realtime or cancelled (only from that batch: a replay is a no-op).

        True: this call settled it; the request is then owed a send back (`lines_to_send_back`)
        unless cancelled.
        """
        status = await self.pool.execute(
            """
            UPDATE openai_batch_lines
               SET state = $3, error = coalesce($4, error), sent_back = ($3 = 'cancelled'), updated_at = now()
             WHERE request_id = $1 AND batch_key = $2 AND state = 'batched'
            """,
            request_id, batch_key, state, error,
        )
        return status == "UPDATE 1"

    async def lines_to_send_back(self, *, older_than: float, limit: int = 500) -> list[HeldLine]:
        """Written or realtime lines whose request was not sent back (a worker stopped in between)."""
        rows = await self.pool.fetch(
            """
            SELECT request_id, site_id, request, attempts FROM openai_batch_lines
             WHERE state IN ('written', 'realtime') AND NOT sent_back
               AND updated_at <= now() - make_interval(secs => $1)
             ORDER BY updated_at LIMIT $2
            """,
            older_than, limit,
        )
        return [HeldLine(r["request_id"], r["site_id"], r["request"], r["attempts"]) for r in rows]

    async def sent_back(self, request_id: str) -> None:
        await self.pool.execute("UPDATE openai_batch_lines SET sent_back = true WHERE request_id = $1", request_id)

    async def requeue_line(self, request_id: str, batch_key: str, *, error: str, counted: bool) -> None:
        """A batched line back in the queue for the next file; `counted`: this batch was one of its tries."""
        await self.pool.execute(
            """
            UPDATE openai_batch_lines
               SET state = 'queued', batch_key = NULL, error = $3, attempts = attempts + $4::int, updated_at = now()
             WHERE request_id = $1 AND batch_key = $2 AND state = 'batched'
            """,
            request_id, batch_key, error, 1 if counted else 0,
        )

    async def batched_lines(self, batch_key: str) -> list[HeldLine]:
        """The lines of a batch not settled yet, in the order its file lists them."""
        rows = await self.pool.fetch(
            "SELECT request_id, site_id, request, attempts, prompt_tokens FROM openai_batch_lines "
            "WHERE batch_key = $1 AND state = 'batched' ORDER BY request_id",
            batch_key,
        )
        return [HeldLine(r["request_id"], r["site_id"], r["request"], r["attempts"], r["prompt_tokens"]) for r in rows]

    async def batch_all_cancelled(self, batch_key: str) -> bool:
        """Is every line the batch still holds a cancelled request's (its generate effect done, no article)?"""
        return bool(await self.pool.fetchval(
            """
            SELECT count(*) > 0 AND bool_and(coalesce((o.payload->>'cancelled')::boolean, false))
              FROM openai_batch_lines l
              LEFT JOIN stage_outputs o ON o.request_id = l.request_id AND o.stage = 'generate' AND o.status = 'done'
             WHERE l.batch_key = $1 AND l.state = 'batched'
            """,
            batch_key,
        ))

    async def batch_lane_counts(self) -> dict[str, int]:
        """Lines by state (operations: how much the lane holds)."""
        rows = await self.pool.fetch("SELECT state, count(*) AS n FROM openai_batch_lines GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def batch_lane_figures(self) -> tuple[dict[str, int], dict[str, float]]:
        """The bulk lane's gauges: requests it holds by line state (queued, batched: PENDING on purpose,
        waiting for a batch), and per model the Unix time the oldest batch not yet ended was recorded."""
        held = await self.pool.fetch("SELECT state, count(*) AS n FROM openai_batch_lines "
                                     "WHERE state = ANY($1::text[]) GROUP BY state", list(HELD))
        oldest = await self.pool.fetch("SELECT model, extract(epoch FROM min(created_at))::float8 AS at "
                                       "FROM openai_batches WHERE state <> 'ended' GROUP BY model")
        return (dict.fromkeys(HELD, 0) | {r["state"]: int(r["n"]) for r in held},
                {r["model"]: float(r["at"]) for r in oldest})

    # --- batches ----------------------------------------------------------------------
    async def assemble_batch(
        self, batch_key: str, model: str, *, max_lines: int, max_bytes: int, max_enqueued_tokens: int,
        collect_seconds: float, owner: str, lease_seconds: float, global_daily_usd: float | None = None,
    ) -> BatchRow | None:
        """Put the oldest queued lines of `model` into a new batch, within the Batch API's limits.

        Only once the oldest has waited `collect_seconds` or a full file is queued;
        lines of paused sites, and of sites a spend cap holds, wait. The tokens of batches still running count against
        `max_enqueued_tokens`. The new batch is claimed by `owner`. None: nothing to send now.

        Money: a line is billed when its batch ends, hours later, so a capped site's lines go in only
        while the worst case (`max_usd`) of those before it fits in what the site has left under its
        caps, less the worst case of its lines in running batches (`_SITE_ROOM`); the last line
        taken may go past by its own worst case. A site whose caps are then all reserved is held
        (`_HOLD_RESERVED`) until its batches end. With a global daily cap, all sites' lines likewise.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            lines = await conn.fetch(
                """
                SELECT l.request_id, l.prompt_tokens, l.bytes, l.max_usd,
                       l.queued_at <= now() - make_interval(secs => $3) AS due
                  FROM openai_batch_lines l LEFT JOIN sites s ON s.site_id = l.site_id
                 WHERE l.state = 'queued' AND l.model = $1 AND NOT coalesce(s.paused, false)
                   AND s.budget_exhausted IS NULL
                   AND l.request_id NOT IN (SELECT request_id FROM (""" + _SITE_ROOM + """) r WHERE r.before >= r.room)
                 ORDER BY l.queued_at, l.request_id
                 LIMIT $2
                 FOR UPDATE OF l SKIP LOCKED
                """,
                model, max_lines, collect_seconds,
            )
            if not lines or (not lines[0]["due"] and len(lines) < max_lines):
                return None
            running = await conn.fetchval(
                "SELECT coalesce(sum(prompt_tokens), 0) FROM openai_batches WHERE model = $1 AND state <> 'ended'", model,
            )
            money = None if not global_daily_usd else Decimal(str(global_daily_usd)) - await conn.fetchval(_GLOBAL_USED)
            room, size, taken = max_enqueued_tokens - int(running), 0, []
            for line in lines:
                if size + line["bytes"] > max_bytes or line["prompt_tokens"] > room or (money is not None and money <= 0):
                    break
                size += line["bytes"]
                room -= line["prompt_tokens"]
                if money is not None:
                    money -= line["max_usd"]
                taken.append(line)
            if not taken:
                return None
            tokens = sum(line["prompt_tokens"] for line in taken)
            record = await conn.fetchrow(
                "INSERT INTO openai_batches (batch_key, model, lines, prompt_tokens, claimed_by, claimed_until) "
                "VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) RETURNING *",
                batch_key, model, len(taken), tokens, owner, lease_seconds,
            )
            await conn.execute(
                "UPDATE openai_batch_lines SET state = 'batched', batch_key = $1, updated_at = now() "
                "WHERE request_id = ANY($2::text[])",
                batch_key, [line["request_id"] for line in taken],
            )
            await conn.execute(_HOLD_RESERVED, batch_key)
            if money is not None and money <= 0:  # the global daily cap is reserved in full: every site waits
                await conn.execute("UPDATE sites SET budget_exhausted = 'global_day', updated_at = now() "
                                   "WHERE budget_exhausted IS NULL")
        return _batch(record)

    async def claim_batches(self, owner: str, *, lease_seconds: float, poll_seconds: float, limit: int = 20) -> list[BatchRow]:
        """Claim batches with work to do: not sent yet, or sent and not polled for `poll_seconds`
        (nor before `next_poll_at`, set by `poll_failed`).

        A claim last renewed before Postgres (re)started is its owner's until the server has been
        up for a lease, as an effect's (store/effects.py): a batch taken over while its owner still
        uploads or creates it is created, and paid for, twice."""
        rows = await self.pool.fetch(
            """
            UPDATE openai_batches b SET claimed_by = $1, claimed_until = now() + make_interval(secs => $2),
                   claimed_at = now()
             WHERE b.batch_key IN (
               SELECT batch_key FROM openai_batches
                WHERE state <> 'ended' AND (claimed_until IS NULL OR (claimed_until < now() AND """ + _OUTLIVED_RESTART + """))
                  AND (state <> 'submitted' OR (
                       (polled_at IS NULL OR polled_at <= now() - make_interval(secs => $3))
                       AND (next_poll_at IS NULL OR next_poll_at <= now())))
                ORDER BY created_at LIMIT $4
                FOR UPDATE SKIP LOCKED)
            RETURNING b.*
            """,
            owner, lease_seconds, poll_seconds, limit,
        )
        return [_batch(r) for r in rows]

    async def extend_batch_claim(self, batch_key: str, owner: str, *, lease_seconds: float) -> bool:
        status = await self.pool.execute(
            "UPDATE openai_batches SET claimed_until = now() + make_interval(secs => $3), claimed_at = now() "
            "WHERE batch_key = $1 AND claimed_by = $2",
            batch_key, owner, lease_seconds,
        )
        return status == "UPDATE 1"

    async def mark_batch(self, batch_key: str, owner: str, state: str, *, batch_id: str | None = None,
                         provider_status: str | None = None, error: str | None = None, release: bool = False) -> bool:
        """Move our claimed batch on; False: the claim was lost (another worker has it: stop)."""
        status = await self.pool.execute(
            """
            UPDATE openai_batches
               SET state = $3, batch_id = coalesce($4, batch_id), provider_status = coalesce($5, provider_status),
                   error = CASE WHEN $6::text IS NULL AND $5::text IS NOT NULL THEN NULL ELSE coalesce($6, error) END,
                   polled_at = CASE WHEN $5::text IS NULL THEN polled_at ELSE now() END,
                   poll_failures = CASE WHEN $5::text IS NULL THEN poll_failures ELSE 0 END,
                   next_poll_at = CASE WHEN $5::text IS NULL THEN next_poll_at END,
                   ended_at = CASE WHEN $3 = 'ended' THEN now() ELSE ended_at END,
                   claimed_until = CASE WHEN $7 THEN NULL ELSE claimed_until END
             WHERE batch_key = $1 AND claimed_by = $2
            """,
            batch_key, owner, state, batch_id, provider_status, error, release,
        )
        return status == "UPDATE 1"

    async def poll_failed(self, batch_key: str, owner: str, *, poll_seconds: float, error: str) -> tuple[int, float]:
        """Our claimed batch could not be looked at (a passing fault, or our key refused): released, and not
        looked at again for the poll interval, doubled after each failure in a row (at most 2^6 times).
        Returns (failures in a row, seconds until the next look); (0, 0.0) when the claim was lost."""
        record = await self.pool.fetchrow(
            """
            UPDATE openai_batches
               SET poll_failures = poll_failures + 1, polled_at = now(), error = $3, claimed_until = NULL,
                   next_poll_at = now() + make_interval(secs => $4 * 2 ^ (least(poll_failures + 1, $5 + 1) - 1))
             WHERE batch_key = $1 AND claimed_by = $2
            RETURNING poll_failures, extract(epoch FROM next_poll_at - polled_at)::float8 AS wait
            """,
            batch_key, owner, error, poll_seconds, MAX_POLL_DOUBLINGS,
        )
        return (record["poll_failures"], record["wait"]) if record is not None else (0, 0.0)
