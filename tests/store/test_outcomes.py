"""store/outcomes.py: the forward-only outcome upsert and the reads over blog_generations."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from store.database import Database
from store.outcomes import HealthFigures, OutcomeRow, merge_outcomes

from .conftest import DSN, aio, ev, now, uid


# --- OutcomeRow / merge (no database) --------------------------------------------------------


def test_outcome_row_validation() -> None:
    t = now()
    with pytest.raises(ValueError):
        OutcomeRow("r", "s", "DONE", "drafted", 1, t)  # final status below rank 3
    with pytest.raises(ValueError):
        OutcomeRow("r", "s", "PENDING", "drafted", 2, t)  # rank does not match stage
    with pytest.raises(ValueError):
        OutcomeRow("r", "s", "DONE", "failed", 3, t)  # stage implies FAILED
    with pytest.raises(ValueError):
        OutcomeRow("r", "s", "WEIRD", "requested", 0, t)
    naive = OutcomeRow("r", "s", "PENDING", "requested", 0, datetime(2025, 1, 1, 12, 0))
    assert naive.at.tzinfo is timezone.utc


def test_merge_keeps_highest_rank_and_fills_from_others() -> None:
    t0 = now()
    rows = [
        ev("b", "requested", t0, request={"topic": "b"}),
        ev("a", "drafted", t0 + timedelta(seconds=2), title="A"),
        ev("a", "requested", t0, request={"topic": "a"}),
        ev("a", "illustrated", t0 + timedelta(seconds=3), image_url="img"),
        ev("a", "drafted", t0 + timedelta(seconds=9), title="A-replay"),
    ]
    merged = merge_outcomes(rows)
    assert [m["id"] for m in merged] == ["a", "b"]  # one per id, sorted (lock order)
    a = merged[0]
    assert (a["status"], a["stage"], a["stage_rank"]) == ("PENDING", "illustrated", 2)
    assert a["request"] == {"topic": "a"}
    assert a["title"] == "A"  # the replay (lower rank than illustrated) does not overwrite
    assert a["created_at"] == t0
    assert a["drafted_at"] == t0 + timedelta(seconds=2)


# --- forward-only upsert ------------------------------------------------------------------------


@aio
async def test_lifecycle_moves_forward_and_keeps_earlier_values(db: Database) -> None:
    rid, t0 = uid("req"), now() - timedelta(minutes=5)
    assert await db.upsert_outcomes([ev(rid, "requested", t0, request={"topic": "tea"})]) == 1
    row = await db.get_generation(rid)
    assert row is not None
    assert (row["status"], row["stage"], row["stage_rank"]) == ("PENDING", "requested", 0)
    assert row["request"] == {"topic": "tea"} and row["created_at"] == t0

    await db.upsert_outcomes([ev(rid, "drafted", t0 + timedelta(seconds=10), title="Tea", prompt_tokens=11,
                                 completion_tokens=22, attempts=2)])
    await db.upsert_outcomes([ev(rid, "illustrated", t0 + timedelta(seconds=20), image_url="https://img/1")])
    await db.upsert_outcomes([ev(rid, "published", t0 + timedelta(seconds=30), post_id="p1",
                                 post_url="https://wix/p1")])
    row = await db.get_generation(rid)
    assert (row["status"], row["stage"], row["stage_rank"]) == ("DONE", "published", 3)
    assert row["request"] == {"topic": "tea"}
    assert (row["title"], row["image_url"], row["post_id"], row["post_url"]) == (
        "Tea", "https://img/1", "p1", "https://wix/p1")
    assert (row["prompt_tokens"], row["completion_tokens"], row["attempts"]) == (11, 22, 2)
    assert row["created_at"] == t0
    assert row["drafted_at"] == t0 + timedelta(seconds=10)
    assert row["illustrated_at"] == t0 + timedelta(seconds=20)
    assert row["finished_at"] == t0 + timedelta(seconds=30)


@aio
async def test_replayed_pending_never_moves_done_back(db: Database) -> None:
    rid, t0 = uid("req"), now() - timedelta(minutes=5)
    await db.upsert_outcomes([
        ev(rid, "requested", t0, request={"topic": "x"}),
        ev(rid, "drafted", t0 + timedelta(seconds=1), title="X"),
    ])
    await db.upsert_outcomes([ev(rid, "published", t0 + timedelta(seconds=3), post_url="u")])
    before = await db.get_generation(rid)

    # Replays of everything that came before: nothing changes, nothing is even written.
    changed = await db.upsert_outcomes([
        ev(rid, "requested", t0, request={"topic": "x"}),
        ev(rid, "drafted", t0 + timedelta(seconds=1), title="X"),
    ])
    assert changed == 0
    # A replayed PENDING at a *later* time and with different values still cannot win.
    await db.upsert_outcomes([ev(rid, "illustrated", t0 + timedelta(seconds=99), image_url="late", title="Other")])
    after = await db.get_generation(rid)
    assert (after["status"], after["stage"], after["stage_rank"]) == ("DONE", "published", 3)
    assert after["finished_at"] == before["finished_at"] == t0 + timedelta(seconds=3)
    assert after["title"] == "X"  # kept; the stale event only filled the NULL image_url
    assert after["image_url"] == "late"
    assert after["illustrated_at"] == t0 + timedelta(seconds=99)


@aio
async def test_failed_and_cancelled_are_final(db: Database) -> None:
    t0 = now() - timedelta(minutes=1)
    failed, cancelled = uid("req"), uid("req")
    await db.upsert_outcomes([
        ev(failed, "requested", t0), ev(failed, "failed", t0 + timedelta(seconds=5), error="boom", attempts=6),
        ev(cancelled, "requested", t0), ev(cancelled, "cancelled", t0 + timedelta(seconds=5)),
    ])
    # late events from in-flight stages, and a competing final event (but DONE: a post exists, see below)
    await db.upsert_outcomes([
        ev(failed, "illustrated", t0 + timedelta(seconds=6)),
        ev(failed, "cancelled", t0 + timedelta(seconds=7)),
        ev(cancelled, "drafted", t0 + timedelta(seconds=6), title="T"),
    ])
    f = await db.get_generation(failed)
    c = await db.get_generation(cancelled)
    assert (f["status"], f["stage"], f["error"], f["attempts"]) == ("FAILED", "failed", "boom", 6)
    assert f["finished_at"] == t0 + timedelta(seconds=5)
    assert (c["status"], c["stage"], c["title"]) == ("CANCELLED", "cancelled", "T")


@aio
async def test_out_of_order_arrival(db: Database) -> None:
    rid, t0 = uid("req"), now() - timedelta(minutes=2)
    # The publish outcome overtakes everything (different topics, different lag).
    assert await db.upsert_outcomes([ev(rid, "published", t0 + timedelta(seconds=30), post_url="u")]) == 1
    row = await db.get_generation(rid)
    assert (row["status"], row["created_at"], row["request"]) == ("DONE", t0 + timedelta(seconds=30), None)

    assert await db.upsert_outcomes([ev(rid, "drafted", t0 + timedelta(seconds=10), title="T", prompt_tokens=5)]) == 1
    assert await db.upsert_outcomes([ev(rid, "requested", t0, request={"topic": "late"})]) == 1
    row = await db.get_generation(rid)
    assert (row["status"], row["stage"], row["stage_rank"]) == ("DONE", "published", 3)
    assert row["request"] == {"topic": "late"}
    assert (row["title"], row["prompt_tokens"], row["post_url"]) == ("T", 5, "u")
    assert row["created_at"] == t0  # the earliest event time wins
    assert row["drafted_at"] == t0 + timedelta(seconds=10)
    assert row["finished_at"] == t0 + timedelta(seconds=30)


@aio
async def test_batch_with_duplicates(db: Database) -> None:
    t0 = now() - timedelta(minutes=3)
    a, b, c = uid("req"), uid("req"), uid("req")
    batch = [
        ev(a, "requested", t0, request={"n": 1}),
        ev(b, "requested", t0, request={"n": 2}),
        ev(a, "drafted", t0 + timedelta(seconds=1), title="A"),
        ev(a, "requested", t0, request={"n": 1}),  # replay inside the batch
        ev(c, "published", t0 + timedelta(seconds=4), post_url="c"),
        ev(a, "illustrated", t0 + timedelta(seconds=2), image_url="ia"),
        ev(c, "requested", t0, request={"n": 3}),  # arrives after its final event
        ev(b, "drafted", t0 + timedelta(seconds=1), title="B"),
        ev(b, "drafted", t0 + timedelta(seconds=8), title="B2"),  # tie: PENDING->PENDING keeps first
    ]
    assert await db.upsert_outcomes(batch) == 3  # one row per request, one statement
    ra, rb, rc = [await db.get_generation(x) for x in (a, b, c)]
    assert (ra["stage"], ra["request"], ra["title"], ra["image_url"]) == ("illustrated", {"n": 1}, "A", "ia")
    assert ra["created_at"] == t0 and ra["drafted_at"] == t0 + timedelta(seconds=1)
    assert (rb["stage"], rb["title"], rb["drafted_at"]) == ("drafted", "B", t0 + timedelta(seconds=1))
    assert (rc["status"], rc["request"], rc["created_at"]) == ("DONE", {"n": 3}, t0)
    assert await db.upsert_outcomes([]) == 0


@aio
async def test_upsert_5000_rows_in_one_batch(db: Database, capsys: pytest.CaptureFixture[str]) -> None:
    site, t0 = uid("site"), now() - timedelta(minutes=1)
    ids = [uid("bulk") for _ in range(5000)]
    rows = [ev(i, "requested", t0, site_id=site, request={"topic": i, "words": 800}) for i in ids]
    started = time.perf_counter()
    assert await db.upsert_outcomes(rows) == 5000
    insert_s = time.perf_counter() - started

    started = time.perf_counter()
    assert await db.upsert_outcomes(rows) == 0  # pure replay: no row changes
    replay_s = time.perf_counter() - started

    drafted = [ev(i, "drafted", t0 + timedelta(seconds=5), site_id=site, title=f"T {i}") for i in ids]
    started = time.perf_counter()
    assert await db.upsert_outcomes(drafted) == 5000
    advance_s = time.perf_counter() - started

    assert (await db.pending_by_site())[site] == 5000
    with capsys.disabled():
        print(f"\n[5000-row batch] insert {insert_s * 1000:.0f} ms, replay {replay_s * 1000:.0f} ms, "
              f"advance {advance_s * 1000:.0f} ms")


@aio
async def test_concurrent_overlapping_batches_do_not_deadlock(db: Database) -> None:
    # Sinks on several workers may write the same requests at once (replays, rebalances);
    # batches are written in id order, so they queue on row locks instead of deadlocking.
    import random

    t0 = now() - timedelta(minutes=1)
    ids = [uid("ovl") for _ in range(400)]
    batches = []
    for n in range(6):
        stage = ("requested", "drafted", "illustrated")[n % 3]
        rows = [ev(i, stage, t0 + timedelta(seconds=n % 3), request={"i": i}) for i in ids]
        random.shuffle(rows)
        batches.append(rows)
    await asyncio.gather(*(db.upsert_outcomes(b) for b in batches))
    rows = [await db.get_generation(i) for i in ids[:20]]
    assert {(r["stage"], r["created_at"]) for r in rows} == {("illustrated", t0)}


# --- the seed's SQL, unchanged, against the table ---------------------------------------------


SEED_PENDING = "SELECT COUNT(*) FROM blog_generations WHERE status = 'PENDING'"
SEED_FAILED = "SELECT COUNT(*) FROM blog_generations WHERE status = 'FAILED'"
SEED_RECENT_ERRORS = (
    "SELECT id, error, created_at FROM blog_generations WHERE status = 'FAILED' ORDER BY created_at DESC LIMIT 10"
)
SEED_DONE_LAST_HOUR = (
    "SELECT COUNT(*) FROM blog_generations WHERE status = 'DONE' AND finished_at > NOW() - INTERVAL '1 hour'"
)
SEED_FAILED_LAST_HOUR = (
    "SELECT COUNT(*) FROM blog_generations WHERE status = 'FAILED' AND created_at > NOW() - INTERVAL '1 hour'"
)
SEED_RETRY = (
    "UPDATE blog_generations SET status = 'PENDING', error = NULL "
    "WHERE status = 'FAILED' AND created_at > NOW() - INTERVAL '1 hour'"
)


async def _seed_figures(conn: asyncpg.Connection) -> dict[str, int]:
    return {
        "pending": await conn.fetchval(SEED_PENDING),
        "failed": await conn.fetchval(SEED_FAILED),
        "done_hour": await conn.fetchval(SEED_DONE_LAST_HOUR),
        "failed_hour": await conn.fetchval(SEED_FAILED_LAST_HOUR),
    }


async def _mixed_rows(view: Database, site: str) -> dict[str, list[str]]:
    """3 PENDING, 2 FAILED this hour, 1 FAILED 2 h ago, 4 DONE this hour, 1 DONE 2 h ago, 1 CANCELLED."""
    t, old = now() - timedelta(minutes=5), now() - timedelta(hours=2)
    ids: dict[str, list[str]] = {k: [uid(k) for _ in range(n)] for k, n in
                                 [("pending", 3), ("failed", 2), ("failed_old", 1), ("done", 4),
                                  ("done_old", 1), ("cancelled", 1)]}
    rows = [ev(i, "requested", t, site) for i in ids["pending"]]
    rows += [ev(i, "failed", t, site, error=f"err {i}") for i in ids["failed"]]
    rows += [ev(i, "failed", old, site, error="old") for i in ids["failed_old"]]
    rows += [ev(i, "published", t, site) for i in ids["done"]]
    rows += [ev(i, "published", old, site) for i in ids["done_old"]]
    rows += [ev(i, "cancelled", t, site) for i in ids["cancelled"]]
    assert await view.upsert_outcomes(rows) == 12
    return ids


@aio
async def test_seed_sql_runs_unchanged(tx: tuple[Database, asyncpg.Connection]) -> None:
    view, conn = tx
    before = await _seed_figures(conn)
    site = uid("site")
    ids = await _mixed_rows(view, site)
    after = await _seed_figures(conn)
    assert {k: after[k] - before[k] for k in after} == {"pending": 3, "failed": 3, "done_hour": 4, "failed_hour": 2}

    recent = await conn.fetch(SEED_RECENT_ERRORS)
    assert len(recent) <= 10 and list(recent[0].keys()) == ["id", "error", "created_at"]
    assert [tuple(r) for r in recent] == list(await view.recent_errors())

    # The seed's retry: recent failures back to PENDING, error cleared; the old one stays.
    status = await conn.execute(SEED_RETRY)
    assert int(status.split()[-1]) >= 2
    for rid in ids["failed"]:
        row = await view.get_generation(rid)
        assert (row["status"], row["error"]) == ("PENDING", None)
    assert (await view.get_generation(ids["failed_old"][0]))["status"] == "FAILED"

    # A retried row (PENDING at rank 3) can still finish: equal rank, PENDING -> final moves on...
    retried = ids["failed"][0]
    await view.upsert_outcomes([ev(retried, "drafted", now(), site), ev(retried, "published", now(), site, post_url="u")])
    row = await view.get_generation(retried)
    assert (row["status"], row["stage"], row["post_url"]) == ("DONE", "published", "u")
    # ...and once DONE, the replayed FAILED does not take it back.
    await view.upsert_outcomes([ev(retried, "failed", now(), site, error="old failure replayed")])
    assert (await view.get_generation(retried))["status"] == "DONE"


# --- health / intake reads ------------------------------------------------------------------------


@aio
async def test_health_figures(tx: tuple[Database, asyncpg.Connection]) -> None:
    view, conn = tx
    before = await view.health()
    await _mixed_rows(view, uid("site"))
    after = await view.health()
    assert isinstance(after, HealthFigures)
    assert after.queue_size - before.queue_size == 3
    assert after.errors_last_hour - before.errors_last_hour == 2
    assert after.completed_last_hour - before.completed_last_hour == 4
    assert after.blogs_per_minute == pytest.approx(after.completed_last_hour / 60)
    seed = await _seed_figures(conn)  # same snapshot: the figures are the seed's queries
    assert (after.queue_size, after.errors_last_hour, after.completed_last_hour) == (
        seed["pending"], seed["failed_hour"], seed["done_hour"])
    assert set(after.as_dict()) == {"queue_size", "errors_last_hour", "completed_last_hour", "blogs_per_minute"}


@aio
async def test_status_counts(tx: tuple[Database, asyncpg.Connection]) -> None:
    view, conn = tx
    before = await view.status_counts()
    assert set(before) == {"PENDING", "DONE", "FAILED", "CANCELLED"}
    await _mixed_rows(view, uid("site"))
    after = await view.status_counts()
    assert {k: after[k] - before[k] for k in after} == {"PENDING": 3, "DONE": 5, "FAILED": 3, "CANCELLED": 1}


@aio
async def test_recent_errors_newest_first(tx: tuple[Database, asyncpg.Connection]) -> None:
    view, _ = tx
    # Event times in the future so these are the newest failures in the (frozen) snapshot.
    base = now() + timedelta(days=365)
    ids = [uid("err") for _ in range(3)]
    await view.upsert_outcomes([ev(i, "failed", base + timedelta(seconds=n), error=f"e{n}") for n, i in enumerate(ids)])
    errors = await view.recent_errors(limit=2)
    assert [(e.id, e.error) for e in errors] == [(ids[2], "e2"), (ids[1], "e1")]
    assert errors[0].created_at == base + timedelta(seconds=2)


@aio
async def test_pending_by_site_and_site_paging(db: Database) -> None:
    site, other, t0 = uid("site"), uid("site"), now() - timedelta(hours=1)
    ids = [uid("req") for _ in range(7)]
    rows = [ev(i, "requested", t0 + timedelta(seconds=n), site) for n, i in enumerate(ids)]
    rows += [ev(ids[0], "published", t0 + timedelta(minutes=5), site), ev(uid("req"), "requested", t0, other)]
    await db.upsert_outcomes(rows)
    pending = await db.pending_by_site()
    assert pending[site] == 6 and pending[other] == 1

    pages, after = [], None
    while True:
        page = await db.list_site_generations(site, limit=3, after_id=after)
        if not page:
            break
        pages.append([r["id"] for r in page])
        after = page[-1]["id"]
    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]  # newest first, 3 + 3 + 1
    assert await db.list_site_generations(site, limit=3, after_id="no-such-id") == []
    assert await db.list_site_generations(other, limit=3, after_id=ids[3]) == []  # cursor of another site
    assert await db.get_generation("no-such-id") is None
    with pytest.raises(ValueError):
        await db.list_site_generations(site, limit=0)


@aio
async def test_pending_snapshot(db: Database) -> None:
    site, other, done_site, t0 = uid("site"), uid("site"), uid("site"), now() - timedelta(minutes=10)
    ids = [uid("req") for _ in range(4)]
    rows = [ev(i, "requested", t0, site) for i in ids[:3]]
    rows += [ev(ids[1], "drafted", t0 + timedelta(seconds=1), site)]  # still PENDING
    rows += [ev(ids[2], "published", t0 + timedelta(seconds=2), site)]  # DONE: not pending, but exists
    rows += [ev(ids[3], "requested", t0, other), ev(uid("req"), "failed", t0, done_site)]
    await db.upsert_outcomes(rows)

    unknown = uid("req")
    by_site, bulk_by_site, existing = await db.pending_snapshot([ids[0], ids[2], unknown])
    assert by_site[site] == 2 and by_site[other] == 1
    assert site not in bulk_by_site and other not in bulk_by_site
    assert done_site not in by_site  # a site without PENDING rows is absent, not 0
    assert all(isinstance(n, int) for n in by_site.values())
    assert existing == {ids[0], ids[2]}  # of the given ids, those with a row (any status)
    # The per-site figures are pending_by_site's.
    pending = await db.pending_by_site()
    assert {s: by_site[s] for s in (site, other)} == {s: pending[s] for s in (site, other)}

    by_site, _, existing = await db.pending_snapshot([])
    assert existing == set() and by_site[site] == 2


@aio
async def test_pending_snapshot_counts_bulk_requests_apart(db: Database) -> None:
    """A row is in the bulk lane when its request says "priority": "bulk"; without a request, interactive."""
    site, t0 = uid("site"), now() - timedelta(minutes=10)
    bulk = [uid("req") for _ in range(3)]
    interactive = [uid("req") for _ in range(2)]
    for request_id in bulk:
        await db.request_owner(request_id, site, request={"request_id": request_id, "priority": "bulk"}, at=t0)
    await db.request_owner(interactive[0], site, request={"request_id": interactive[0], "priority": "interactive"}, at=t0)
    await db.request_owner(interactive[1], site, at=t0)  # no request stored
    await db.upsert_outcomes([ev(bulk[2], "published", t0 + timedelta(seconds=1), site)])  # DONE: not pending

    by_site, bulk_by_site, _ = await db.pending_snapshot([])
    assert (by_site[site], bulk_by_site[site]) == (2, 2)
    assert await db.pending_bulk() >= 2


# --- tenancy: a request id belongs to one site ------------------------------------------------------


@aio
async def test_an_event_of_another_site_never_changes_a_row(db: Database) -> None:
    rid, mine, theirs, t0 = uid("req"), uid("site"), uid("site"), now()
    await db.upsert_outcomes([ev(rid, "requested", t0, mine, request={"topic": "mine"})])
    report = await db.store_outcomes([
        ev(rid, "drafted", t0, theirs, title="theirs", request={"topic": "theirs"}),
        ev(rid, "published", t0, theirs, post_id="p-theirs", post_url="u-theirs"),
    ])
    assert report.changed == 0 and report.foreign == {(rid, theirs)}
    row = await db.get_generation(rid)
    assert (row["site_id"], row["status"], row["stage"], row["title"], row["post_id"]) == (mine, "PENDING", "requested", None, None)
    assert row["request"] == {"topic": "mine"}
    # The owner's own events still move it on, in the same batch as a foreign one.
    report = await db.store_outcomes([ev(rid, "published", t0, theirs, post_id="x"), ev(rid, "drafted", t0, mine, title="T")])
    assert report.changed == 1 and report.foreign == {(rid, theirs)}
    assert (await db.get_generation(rid))["title"] == "T"


@aio
async def test_one_new_id_with_two_sites_in_one_batch_goes_to_the_first(db: Database) -> None:
    rid, first, second, t0 = uid("req"), uid("site"), uid("site"), now()
    report = await db.store_outcomes([
        ev(rid, "requested", t0, first, request={"n": 1}),
        ev(rid, "requested", t0, second, request={"n": 2}),
        ev(rid, "drafted", t0, first, title="first"),
    ])
    assert report.changed == 1 and report.foreign == {(rid, second)}
    row = await db.get_generation(rid)
    assert (row["site_id"], row["request"], row["title"]) == (first, {"n": 1}, "first")


@aio
async def test_request_owner_claims_a_new_id_once(db: Database) -> None:
    rid, mine, theirs, t0 = uid("req"), uid("site"), uid("site"), now() - timedelta(seconds=5)
    owners = await asyncio.gather(*[
        db.request_owner(rid, site, request={"site": site}, at=t0) for site in [mine, theirs] * 5
    ])
    assert len(set(owners)) == 1
    owner = owners[0]
    row = await db.get_generation(rid)
    assert (row["site_id"], row["status"], row["stage"], row["request"]) == (owner, "PENDING", "requested", {"site": owner})
    assert row["created_at"] == t0
    assert await db.request_owner(rid, theirs if owner == mine else mine) == owner
    assert await db.request_sites([rid, uid("none")]) == {rid: owner}
    # The sink's later event for the owner fills in as usual.
    await db.upsert_outcomes([ev(rid, "drafted", now(), owner, title="T")])
    assert (await db.get_generation(rid))["stage"] == "drafted"


@aio
async def test_request_owners_asked_together_share_a_statement_and_each_gets_its_own_answer(db: Database) -> None:
    """New ids claimed for their askers, ids with a row keep their site (another site's too), one id asked
    by two sites goes to the first: what one statement per call answered, in one or two statements."""
    mine, theirs, t0 = uid("site"), uid("site"), now() - timedelta(seconds=5)
    known = [uid("req") for _ in range(10)]
    await db.upsert_outcomes([ev(rid, "requested", t0, theirs, request={"n": 1}) for rid in known])
    new = [uid("req") for _ in range(40)]
    shared = uid("req")
    asks = [(rid, mine) for rid in new + known] + [(shared, mine), (shared, theirs)]
    db._owners = None
    owners = await asyncio.gather(*[db.request_owner(rid, site, request={"site": site}, at=t0) for rid, site in asks])
    assert owners == [mine] * 40 + [theirs] * 10 + [mine, mine]
    assert db._owners is not None and db._owners.batches <= 2
    rows = {rid: await db.get_generation(rid) for rid in new[:3] + [shared]}
    assert all((r["site_id"], r["status"], r["request"], r["created_at"]) == (mine, "PENDING", {"site": mine}, t0)
               for r in rows.values())


@aio
async def test_owner_claims_lock_rows_in_the_sinks_order_each_id_once() -> None:
    """The statement gets each id once (its first asker's site), sorted as merge_outcomes sorts the sink's rows:
    both lock rows in one order, so a claim and a sink write never deadlock."""
    from store.outcomes import _OwnerClaims

    sent: list[list] = []

    class Pool:
        async def fetch(self, sql, ids, sites, requests, times):
            sent.append([ids, sites])
            return [{"id": i, "site_id": s} for i, s in zip(ids, sites)]

    claims = _OwnerClaims(Pool())  # type: ignore[arg-type]
    items = [("b-2", "s1", None, None), ("B-1", "s2", None, None), ("a", "s3", "{}", None), ("b-2", "s4", None, None)]
    assert await claims._claim(items) == ["s1", "s2", "s3", "s1"]
    assert sent == [[sorted(["b-2", "B-1", "a"]), ["s2", "s3", "s1"]]]
    assert [r["id"] for r in merge_outcomes([ev(i, "requested", now(), "s") for i in ("b-2", "B-1", "a")])] == sent[0][0]


@aio
async def test_a_request_owner_claimed_by_a_transaction_that_commits_meanwhile_is_read_again(db: Database) -> None:
    """Another worker's insert of the id commits while our statement waits on it: not in our snapshot, so
    the claim comes back empty and a fresh read gives the other site, never ours."""
    rid, mine, theirs = uid("req"), uid("site"), uid("site")
    other = await asyncpg.connect(DSN)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("INSERT INTO blog_generations (id, site_id, status, stage, stage_rank) "
                            "VALUES ($1, $2, 'PENDING', 'requested', 0)", rid, theirs)
        asking = asyncio.ensure_future(db.request_owner(rid, mine))
        for _ in range(200):  # until our insert waits for theirs (a lock wait, not a sleep of luck)
            # Asked outside `other`'s transaction: pg_stat_activity is read once per transaction there.
            if await db.pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE '%claimed AS%'"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the claim never waited for the other insert")
        await tx.commit()
        assert await asyncio.wait_for(asking, 10) == theirs
    finally:
        await other.close()


@aio
async def test_refused_input_is_recorded_only_where_no_request_is(db: Database) -> None:
    new, existing, site = uid("req"), uid("req"), uid("site")
    await db.upsert_outcomes([ev(existing, "requested", now(), site, request={"n": 1})])
    assert await db.record_rejected(new, site, "invalid generate input: topic: is required")
    assert not await db.record_rejected(existing, site, "invalid generate input: a repeat with a typo")
    assert not await db.record_rejected(existing, uid("site"), "invalid generate input: another site")
    row = await db.get_generation(new)
    assert (row["status"], row["stage"], row["error"]) == ("FAILED", "failed", "invalid generate input: topic: is required")
    assert row["finished_at"] is not None
    kept = await db.get_generation(existing)
    assert (kept["site_id"], kept["status"], kept["error"]) == (site, "PENDING", None)


# --- a post that exists is DONE, whatever said FAILED first -----------------------------------------


async def _run_to_done(db: Database, rid: str, site: str, t: datetime) -> None:
    """A second run of `rid` (the same id sent again, or a retry's record the broker took late) publishing
    its post; the events in the order the sink may see them (the result first: topics lag differently)."""
    await db.upsert_outcomes([ev(rid, "published", t + timedelta(seconds=9), site, post_id="p", post_url="u")])
    await db.upsert_outcomes([ev(rid, "requested", t, site, request={"n": 1}),
                              ev(rid, "drafted", t + timedelta(seconds=2), site, title="T"),
                              ev(rid, "illustrated", t + timedelta(seconds=5), site, image_url="i")])


@aio
async def test_a_post_published_after_its_request_failed_makes_it_done(db: Database) -> None:
    # R failed (say Wix refused the site's key). Its id is sent again (the intake takes it: ids are
    # idempotency keys) once the key is fixed; the pipeline reuses the article and image and posts.
    rid, site, t0 = uid("req"), uid("site"), now() - timedelta(minutes=5)
    await db.upsert_outcomes([ev(rid, "requested", t0, site, request={"n": 1}),
                              ev(rid, "failed", t0 + timedelta(seconds=5), site, error="publish failed: 401")])
    t1 = t0 + timedelta(minutes=1)
    await _run_to_done(db, rid, site, t1)
    row = await db.get_generation(rid)
    # The post is on the site: a FAILED row would have its owner submit it again under a new id (a second post).
    assert (row["status"], row["stage"], row["post_url"], row["error"]) == ("DONE", "published", "u", None)
    assert row["finished_at"] == t1 + timedelta(seconds=9)
    # Forward only still: a replay of the old failure never takes DONE back, nor leaves its error on it.
    await db.upsert_outcomes([ev(rid, "failed", t0 + timedelta(seconds=5), site, error="publish failed: 401")])
    row = await db.get_generation(rid)
    assert (row["status"], row["error"]) == ("DONE", None)


@aio
async def test_a_retry_ends_done_even_when_the_old_failure_is_replayed_during_it(db: Database) -> None:
    # blogstream retry R reopens the row (PENDING, rank 0, the next run); the sink then reads R's old FAILED
    # result again (a replay after a rebalance) while the retry runs and posts.
    rid, site, t0 = uid("req"), uid("site"), now() - timedelta(minutes=5)
    await db.upsert_outcomes([ev(rid, "requested", t0, site, request={"n": 1}),
                              ev(rid, "failed", t0 + timedelta(seconds=5), site, error="publish failed: 401")])
    assert await db.reopen_failed(rid) is not None
    await db.upsert_outcomes([ev(rid, "failed", t0 + timedelta(seconds=5), site, error="publish failed: 401")])
    row = await db.get_generation(rid)  # an earlier run's failure: the retry's row goes on, without it
    assert (row["status"], row["stage"], row["error"], row["finished_at"], row["retry"]) == (
        "PENDING", "requested", None, None, 1)
    await _run_to_done(db, rid, site, t0 + timedelta(minutes=1))  # events of the first run: its DONE wins
    row = await db.get_generation(rid)
    assert (row["status"], row["post_url"], row["error"]) == ("DONE", "u", None)


@aio
async def test_a_retry_follows_its_own_run_whatever_an_earlier_run_sends(db: Database) -> None:
    rid, site, t0 = uid("req"), uid("site"), now() - timedelta(minutes=5)
    await db.upsert_outcomes([ev(rid, "requested", t0, site, request={"n": 1, "retry": 0}),
                              ev(rid, "drafted", t0, site, title="T"),
                              ev(rid, "failed", t0 + timedelta(seconds=5), site, error="image failed: refused")])
    request, error = await db.reopen_failed(rid)
    assert (request, error) == ({"n": 1, "retry": 1}, "image failed: refused")  # what the retry sends: run 1
    t1 = t0 + timedelta(minutes=1)
    # The retry's own events move the row; the first run's, read again or late, add nothing (no stage, no error).
    await db.upsert_outcomes([ev(rid, "drafted", t1, site, retry=1), ev(rid, "illustrated", t0, site, image_url="old"),
                              ev(rid, "failed", t0 + timedelta(seconds=5), site, error="image failed: refused")])
    row = await db.get_generation(rid)
    assert (row["status"], row["stage"], row["error"], row["image_url"], row["finished_at"]) == (
        "PENDING", "drafted", None, None, None)
    await db.upsert_outcomes([ev(rid, "failed", t1 + timedelta(seconds=5), site, error="image failed again", retry=1)])
    row = await db.get_generation(rid)
    assert (row["status"], row["error"], row["retry"]) == ("FAILED", "image failed again", 1)
    assert (await db.reopen_failed(rid))[0]["retry"] == 2  # the next retry is the next run
    # A run later than the row knows (a retry's record the broker took although it answered too late, the row
    # since FAILED again) is the row's run from its first event.
    await db.upsert_outcomes([ev(rid, "failed", t1, site, error="run 2 failed", retry=2)])
    await db.upsert_outcomes([ev(rid, "illustrated", t1, site, retry=3)])
    row = await db.get_generation(rid)
    assert (row["status"], row["stage"], row["error"], row["retry"]) == ("PENDING", "illustrated", None, 3)


def test_a_batch_with_two_runs_of_a_request_is_written_in_two_parts() -> None:
    from store.outcomes import _one_site_per_id

    t0 = now()
    old, new = ev("a", "failed", t0, error="old"), ev("a", "requested", t0, retry=1)
    other = ev("b", "drafted", t0)
    assert _one_site_per_id([old, other, new, old]) == [[old, other, old], [new]]


def test_a_batch_merges_done_over_failed_as_the_database_does() -> None:
    t0 = now()
    merged = merge_outcomes([ev("a", "failed", t0, error="boom"), ev("a", "published", t0, post_url="u"),
                             ev("b", "published", t0, post_url="u"), ev("b", "failed", t0, error="late")])
    assert [(m["status"], m["post_url"], m["error"]) for m in merged] == [("DONE", "u", None), ("DONE", "u", None)]
