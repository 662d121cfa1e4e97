"""``parked_events``: a paused site's stage events, out of Kafka until the site is resumed.

A worker that meets an event of a paused site (or of one a spend cap holds,
store/costs.py: the same rules, "paused" below means either) stores it here and acks it, so the
partition's commit and the worker's read-ahead move on past it. On resume the
events go back to the topics they came from, oldest first, and are deleted only
once the broker has them (`release`): a crash in between sends a batch twice at
worst, and the effect ledger makes a repeated event harmless. A cancel marks
them; the worker that releases them then reports them CANCELLED instead.

Rules that keep it right with several workers:
* `park` stores only the events of sites paused *in the database* at that
  moment (their `sites` rows read FOR SHARE, so a resume waits for the insert
  and the release after it finds the rows); for any other site it stores
  nothing and says so, and the caller runs those events instead;
* one `release` per site at a time across all workers (an advisory lock);
* an event is stored once per (topic, partition, offset): parking a replayed
  copy again is a no-op.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

__all__ = ["ParkedEvent", "ParkedEvents", "cancel_marks", "cancel_waiting"]

# A site is held, its events parked, while it is paused or a spend cap holds it (store/costs.py).
HELD = "(paused OR budget_exhausted IS NOT NULL)"
RELEASE_LOCK = 0x5B17  # advisory lock space of the releases: (RELEASE_LOCK, hashtext(site_id))
_COLUMNS = "id, site_id, stage, request_id, source_topic, source_partition, source_offset, key, value, headers, cancel_reason"


@dataclass(frozen=True)
class ParkedEvent:
    site_id: str
    stage: str  # the stage that parked it (generate, image, publish)
    request_id: str | None  # None: bytes the stage will dead-letter when it gets them back
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    id: int | None = None  # set once stored: the order events go back in
    cancel_reason: str | None = None


def _headers_json(headers: Iterable[tuple[str, bytes]]) -> list[list[str]]:
    return [[name, base64.b64encode(value or b"").decode()] for name, value in headers]


def _event(record: Any) -> ParkedEvent:
    return ParkedEvent(
        site_id=record["site_id"], stage=record["stage"], request_id=record["request_id"],
        topic=record["source_topic"], partition=record["source_partition"], offset=record["source_offset"],
        key=record["key"], value=record["value"],
        headers=[(name, base64.b64decode(value)) for name, value in (record["headers"] or [])],
        id=record["id"], cancel_reason=record["cancel_reason"],
    )


STAGES = ("generate", "image", "publish")  # the effects a request's stages claim, in their order


async def cancel_marks(conn: Any, site_id: str, reason: str, first_stage: dict[str, int]) -> list[str]:
    """Cancel requests in the effect ledger, from their first stage not started on; returns those it holds.

    `first_stage`: request id -> the position (1 generate, 2 image, 3 publish) of
    the earliest stage whose record of it may still run. Each of those stages'
    effects is written done-and-cancelled unless it was claimed or done already,
    so a stage that claims it later finds the cancellation (the stage ends the
    request CANCELLED) and one that claimed it first goes on. Publish decides:
    a request whose post was claimed first is not cancelled (the post happens),
    and none of its stages gets a mark.
    """
    payload = "jsonb_build_object('cancelled', true, 'reason', $2::text)"
    held = {r["request_id"] for r in await conn.fetch(
        f"""
        WITH i AS (SELECT unnest($3::text[]) AS request_id), marked AS (
          INSERT INTO stage_outputs (request_id, stage, site_id, status, payload)
          SELECT request_id, 'publish', $1, 'done', {payload} FROM i
          ON CONFLICT (request_id, stage) DO NOTHING
          RETURNING request_id
        )
        SELECT request_id FROM marked
        UNION SELECT o.request_id FROM stage_outputs o JOIN i USING (request_id)
        WHERE o.stage = 'publish' AND o.site_id = $1 AND o.status = 'done' AND (o.payload->>'cancelled')::boolean
        """,
        site_id, reason, sorted(first_stage),
    )}
    earlier = [(request_id, stage) for request_id in sorted(held)
               for n, stage in enumerate(STAGES[:-1], start=1) if n >= first_stage[request_id]]
    if earlier:
        await conn.execute(
            f"""
            INSERT INTO stage_outputs (request_id, stage, site_id, status, payload)
            SELECT request_id, stage, $1, 'done', {payload} FROM unnest($3::text[], $4::text[]) AS i(request_id, stage)
            ON CONFLICT (request_id, stage) DO NOTHING
            """,
            site_id, reason, [r for r, _ in earlier], [s for _, s in earlier],
        )
    return sorted(held)


class ParkedEvents:
    """Park, release and cancel a paused site's events; `db` is a started store.database.Database."""

    def __init__(self, db: Any) -> None:
        self._db = db

    async def park(self, events: list[ParkedEvent]) -> set[str]:
        """Store the events of the sites paused now; returns those sites (others' events are not stored)."""
        sites = sorted({e.site_id for e in events})
        async with self._db.pool.acquire() as conn, conn.transaction():
            paused = {r["site_id"] for r in await conn.fetch(
                "SELECT site_id FROM sites WHERE site_id = ANY($1::text[]) AND " + HELD + " ORDER BY site_id FOR SHARE", sites)}
            rows = [
                (e.site_id, e.stage, e.request_id, e.topic, e.partition, e.offset, e.key, e.value, _headers_json(e.headers))
                for e in events if e.site_id in paused
            ]
            if rows:  # executemany keeps their order: ids (the order of the release) follow the offsets
                await conn.executemany(
                    """
                    INSERT INTO parked_events
                      (site_id, stage, request_id, source_topic, source_partition, source_offset, key, value, headers)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
                    ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
                    """,
                    rows,
                )
        return paused

    async def due(self) -> list[str]:
        """Sites with parked events to release: resumed (or no longer registered) ones, and cancelled events."""
        records = await self._db.pool.fetch(
            """
            SELECT p.site_id FROM parked_events p LEFT JOIN sites s USING (site_id)
            GROUP BY p.site_id
            HAVING NOT bool_and(coalesce(s.paused OR s.budget_exhausted IS NOT NULL, false)) OR bool_or(p.cancel_reason IS NOT NULL)
            ORDER BY min(p.id)
            """
        )
        return [r["site_id"] for r in records]

    async def release(self, site_id: str, send: Callable[[list[ParkedEvent]], Awaitable[None]], *, batch: int = 100) -> int:
        """Hand a site's parked events to `send`, oldest first, a batch at a time, deleting each batch after it.

        All of them while the site is not paused, only the cancelled ones while
        it is. `send` returns once the broker has the batch. Returns how many
        were released; 0 when another worker is releasing this site right now.
        """
        released = 0
        while True:
            async with self._db.pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))", RELEASE_LOCK, site_id):
                    return released
                paused = await conn.fetchval(f"SELECT {HELD} FROM sites WHERE site_id = $1 FOR SHARE", site_id)
                only_cancelled = "AND cancel_reason IS NOT NULL" if paused else ""
                records = await conn.fetch(
                    f"SELECT {_COLUMNS} FROM parked_events WHERE site_id = $1 {only_cancelled} ORDER BY id LIMIT $2",
                    site_id, batch,
                )
                if not records:
                    return released
                events = [_event(r) for r in records]
                await send(events)
                await conn.execute("DELETE FROM parked_events WHERE id = ANY($1::bigint[])", [e.id for e in events])
            released += len(events)

    async def cancel(self, site_id: str, *, reason: str) -> list[str]:
        """Cancel a site's parked requests: CANCELLED in blog_generations now; returns their ids.

        Their events stay parked, marked, until a worker releases them as
        CANCELLED results (which also free their in-flight slots). Each request
        cancelled gets a cancellation in the effect ledger for every stage from
        the one it was parked at to publish (`cancel_marks`), so a stray copy of
        any of its records (Kafka delivers at least once: a replay after a
        rebalance or a restart) ends CANCELLED too instead of paying or posting.
        A request that cannot be stopped any more is not reported: one already
        published, failed or cancelled (its parked copy is still released as a
        harmless CANCELLED result), or one whose post is being made right now
        (its copy stays parked and runs on resume, finding the post in the
        ledger). Only the site's own requests: an id with another site's row or
        effect is left alone, and an id with no row yet gets this site's row
        first. Waits for a release of the site under way.
        """
        async with self._db.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", RELEASE_LOCK, site_id)
            # The parked requests of this site (a record produced with another site's request id: that
            # request is not ours to end), each with the earliest stage one of its events was parked at.
            waiting = await conn.fetch(
                """
                SELECT p.request_id, min(array_position($2::text[], p.stage)) AS first,
                       bool_or(g.id IS NULL OR g.status = 'PENDING') AS pending
                FROM parked_events p LEFT JOIN blog_generations g ON g.id = p.request_id
                WHERE p.site_id = $1 AND p.cancel_reason IS NULL AND p.request_id IS NOT NULL
                  AND (g.id IS NULL OR g.site_id = $1)
                  AND NOT EXISTS (SELECT 1 FROM stage_outputs o WHERE o.request_id = p.request_id AND o.site_id <> $1)
                GROUP BY p.request_id ORDER BY p.request_id
                """,
                site_id, list(STAGES),
            )
            pending = [r for r in waiting if r["pending"]]
            # An id no site has used yet is used by the cancel for this site, as a stage would use it
            # (`request_owner`: the first site to use an id owns it), so its row and its cancellations in
            # the ledger name the same site: a later request of another site with that id is refused as
            # such, not left PENDING for good. A row another site wrote meanwhile wins: that id is left alone.
            owned = {r["id"] for r in await conn.fetch(
                """
                WITH new AS (
                  INSERT INTO blog_generations (id, site_id, status, stage, stage_rank)
                  SELECT unnest($2::text[]), $1, 'PENDING', 'requested', 0
                  ON CONFLICT (id) DO NOTHING
                  RETURNING id
                )
                SELECT id FROM new UNION SELECT id FROM blog_generations WHERE id = ANY($2::text[]) AND site_id = $1
                """,
                site_id, [r["request_id"] for r in pending],
            )}
            foreign = {r["request_id"] for r in pending} - owned
            pending = [r for r in pending if r["request_id"] in owned]
            cancelled = await cancel_marks(conn, site_id, reason, {r["request_id"]: r["first"] or 1 for r in pending})
            running = {r["request_id"] for r in pending} - set(cancelled)  # their post is under way
            await conn.execute(
                """
                UPDATE parked_events SET cancel_reason = $2
                WHERE site_id = $1 AND cancel_reason IS NULL AND request_id = ANY($3::text[])
                """,
                site_id, reason, [r["request_id"] for r in waiting if r["request_id"] not in running | foreign],
            )
            await conn.execute(
                """
                UPDATE blog_generations
                  SET status = 'CANCELLED', stage = 'cancelled', stage_rank = 3, error = $2,
                      finished_at = now(), updated_at = now()
                WHERE id = ANY($3::text[]) AND status = 'PENDING' AND site_id = $1
                """,
                site_id, reason, cancelled,
            )
        return cancelled

    async def counts(self) -> dict[str, int]:
        """Parked events per site (figures; cancelled ones not yet released included)."""
        records = await self._db.pool.fetch("SELECT site_id, count(*) AS n FROM parked_events GROUP BY site_id")
        return {r["site_id"]: int(r["n"]) for r in records}


async def cancel_waiting(db: Any, site_id: str) -> list[str]:
    """What `blogstream sites cancel` and `POST /api/sites/{id}/cancel` do; returns the cancelled ids.

    The site's parked requests (any stage) and those no stage has started
    (`cancel_queued`) become CANCELLED. Parked ones first: a release racing
    the cancel puts its requests back in the queue, where the second step
    finds them.
    """
    parked = await ParkedEvents(db).cancel(
        site_id, reason=f"cancelled by an operator (site {site_id}) while the site was paused")
    queued = await db.cancel_queued(site_id, reason=f"cancelled by an operator (site {site_id}) before it started")
    return parked + [r for r in queued if r not in set(parked)]
