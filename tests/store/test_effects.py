"""store/effects.py: the effect ledger (claim, complete, extend, release) on stage_outputs."""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg
import pytest

from store.database import Database
from store.effects import EffectClaim

from .conftest import aio, now, uid


# --- effect ledger ------------------------------------------------------------------------------------


@aio
async def test_effect_claim_lifecycle(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    rid, site = uid("req"), uid("site")
    assert await db.get_effect(rid, "generate") is None

    first = await db.claim_effect(rid, "generate", site, owner="w1", lease_seconds=30)
    assert first.state == "acquired" and first.payload is None
    assert first.claimed_until > now() + timedelta(seconds=25)

    busy = await db.claim_effect(rid, "generate", site, owner="w2", lease_seconds=30)
    assert busy == EffectClaim("busy", None, first.claimed_until)
    assert await db.get_effect(rid, "generate") is None  # claimed is not done

    article = {"title": "Tea", "body": "...", "usage": {"prompt_tokens": 10}}
    await db.complete_effect(rid, "generate", site, article, owner="w1")
    done = await db.claim_effect(rid, "generate", site, owner="w3", lease_seconds=30)
    assert done.state == "done" and done.payload == article  # reuse, do not pay again
    assert await db.get_effect(rid, "generate") == article

    with caplog.at_level(logging.INFO, logger="store.effects"):
        await db.complete_effect(rid, "generate", site, {"title": "other"}, owner="w3")  # idempotent
    assert await db.get_effect(rid, "generate") == article  # first payload kept
    assert "already done" in caplog.text

    # other stages of the same request are independent
    assert (await db.claim_effect(rid, "image", site, owner="w1", lease_seconds=30)).state == "acquired"


@aio
@pytest.mark.parametrize(("free", "taken_over"), [("release_effect", False), ("lapse_effect", True)])
async def test_a_claim_given_up_is_claimed_at_once_by_the_next_try(db: Database, free: str, taken_over: bool) -> None:
    """Released after a failed effect, or left to lapse after one that may have happened all the same (a paid
    answer lost): the next try claims it at once, and only a lapsed one tells it to look for what the last
    one may have done (`taken_over`)."""
    rid, site = uid("req"), uid("site")
    assert (await db.claim_effect(rid, "image", site, owner="w1", lease_seconds=60)).state == "acquired"
    await getattr(db, free)(rid, "image", owner="w2")  # not its claim: no effect
    assert (await db.claim_effect(rid, "image", site, owner="w2", lease_seconds=60)).state == "busy"
    await getattr(db, free)(rid, "image", owner="w1")
    after = await db.claim_effect(rid, "image", site, owner="w2", lease_seconds=60)
    assert after.state == "acquired" and after.taken_over is taken_over

    await db.complete_effect(rid, "image", site, {"url": "https://img"}, owner="w2")
    await getattr(db, free)(rid, "image", owner="w2")  # a done effect is never released nor lapsed
    assert (await db.claim_effect(rid, "image", site, owner="w3", lease_seconds=60)).state == "done"


@aio
async def test_expired_lease_is_taken_over(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    rid, site = uid("req"), uid("site")
    first = await db.claim_effect(rid, "publish", site, owner="dead", lease_seconds=0.2)
    assert first.state == "acquired" and not first.taken_over
    assert (await db.claim_effect(rid, "publish", site, owner="w2", lease_seconds=30)).state == "busy"
    await asyncio.sleep(0.3)
    taken = await db.claim_effect(rid, "publish", site, owner="w2", lease_seconds=30)
    assert taken.state == "acquired" and taken.taken_over  # "dead" may have done it: the taker is told
    assert (await db.claim_effect(rid, "publish", site, owner="w3", lease_seconds=30)).state == "busy"

    # The "dead" worker was only slow and finishes anyway: its effect happened, so it is
    # recorded (and the double effect is logged); w2 then finds it done.
    with caplog.at_level(logging.WARNING, logger="store.effects"):
        await db.complete_effect(rid, "publish", site, {"post_id": "p-dead"}, owner="dead")
    assert "may have run twice" in caplog.text
    await db.complete_effect(rid, "publish", site, {"post_id": "p-w2"}, owner="w2")
    assert await db.get_effect(rid, "publish") == {"post_id": "p-dead"}


async def _lapsed_before_a_restart(db: Database, rid: str, stage: str) -> None:
    """Make the claim look last renewed before the server started, and run out (an outage longer than a lease)."""
    await db.pool.execute(
        "UPDATE stage_outputs SET updated_at = pg_postmaster_start_time() - interval '1 second', "
        "claimed_until = now() - interval '1 second' WHERE request_id = $1 AND stage = $2", rid, stage)


@aio
async def test_a_claim_that_lapsed_in_a_restart_is_its_owners_for_a_lease(db: Database) -> None:
    """Postgres away longer than a lease: a live owner that paid meanwhile gets a lease to renew first."""
    rid, site = uid("req"), uid("site")
    up_for = (await db.pool.fetchval("SELECT extract(epoch FROM now() - pg_postmaster_start_time())"))
    assert (await db.claim_effect(rid, "generate", site, owner="paid", lease_seconds=30)).state == "acquired"
    await _lapsed_before_a_restart(db, rid, "generate")

    # The server has been up for less than the taker's lease: the owner may still come back.
    assert (await db.claim_effect(rid, "generate", site, owner="w2", lease_seconds=float(up_for) + 3600)).state == "busy"
    assert await db.extend_effect(rid, "generate", owner="paid", lease_seconds=30)  # and it does
    assert (await db.claim_effect(rid, "generate", site, owner="w2", lease_seconds=0.001)).state == "busy"

    # A claim renewed since the start runs out as any other: taken over once lapsed.
    await db.pool.execute("UPDATE stage_outputs SET claimed_until = now() - interval '1 second' "
                          "WHERE request_id = $1", rid)
    assert (await db.claim_effect(rid, "generate", site, owner="w3", lease_seconds=30)).state == "acquired"

    # Up for longer than the taker's lease: the owner had its chance; the claim is taken over.
    await _lapsed_before_a_restart(db, rid, "generate")
    assert (await db.claim_effect(rid, "generate", site, owner="w4", lease_seconds=float(up_for) / 2)).state == "acquired"


@aio
async def test_concurrent_claims_exactly_one_acquires(db: Database) -> None:
    rid, site = uid("req"), uid("site")
    claims = await asyncio.gather(*(
        db.claim_effect(rid, "generate", site, owner=f"w{n}", lease_seconds=30) for n in range(20)
    ))
    states = [c.state for c in claims]
    assert states.count("acquired") == 1 and states.count("busy") == 19

    winner = f"w{states.index('acquired')}"
    await db.complete_effect(rid, "generate", site, {"ok": True}, owner=winner)
    again = await asyncio.gather(*(
        db.claim_effect(rid, "generate", site, owner=f"v{n}", lease_seconds=30) for n in range(20)
    ))
    assert {(c.state, c.payload["ok"]) for c in again} == {("done", True)}


@aio
async def test_concurrent_takeover_of_an_expired_lease(db: Database) -> None:
    rid, site = uid("req"), uid("site")
    await db.claim_effect(rid, "image", site, owner="dead", lease_seconds=0.1)
    await asyncio.sleep(0.2)
    claims = await asyncio.gather(*(
        db.claim_effect(rid, "image", site, owner=f"w{n}", lease_seconds=30) for n in range(20)
    ))
    assert [c.state for c in claims].count("acquired") == 1


@aio
async def test_ledger_constraints(db: Database) -> None:
    with pytest.raises(asyncpg.CheckViolationError):  # a done effect must keep its payload
        await db.pool.execute(
            "INSERT INTO stage_outputs (request_id, stage, site_id, status) VALUES ($1, 'x', 's', 'done')", uid())
    with pytest.raises(ValueError):
        await db.claim_effect(uid(), "x", "s", owner="w", lease_seconds=0)


@aio
async def test_extend_many_renews_each_of_our_live_claims_in_one_statement(db: Database) -> None:
    site = uid("site")
    mine, theirs, done = uid("req"), uid("req"), uid("req")
    for rid, owner in ((mine, "w1"), (theirs, "w2"), (done, "w1")):
        assert (await db.claim_effect(rid, "image", site, owner=owner, lease_seconds=0.2)).state == "acquired"
    await db.complete_effect(done, "image", site, {"url": "https://img"}, owner="w1")
    renewed = await db.extend_effects([(mine, "image", "w1"), (theirs, "image", "w1"), (done, "image", "w1")],
                                      lease_seconds=30)
    assert renewed == [True, False, False]  # not its claim; done: nothing to renew
    await asyncio.sleep(0.3)  # past the first lease: the renewed claim holds, the other one lapsed
    assert (await db.claim_effect(mine, "image", site, owner="w3", lease_seconds=30)).state == "busy"
    assert (await db.claim_effect(theirs, "image", site, owner="w3", lease_seconds=30)).state == "acquired"


@aio
async def test_extend_renews_only_our_live_claim(db: Database) -> None:
    rid, site = uid("req"), uid("site")
    assert (await db.claim_effect(rid, "image", site, owner="w1", lease_seconds=0.2)).state == "acquired"
    assert await db.extend_effect(rid, "image", owner="w1", lease_seconds=30) is True
    assert await db.extend_effect(rid, "image", owner="w2", lease_seconds=30) is False  # not its claim
    await asyncio.sleep(0.3)  # past the first lease: the renewed one still holds
    assert (await db.claim_effect(rid, "image", site, owner="w2", lease_seconds=30)).state == "busy"
    await db.complete_effect(rid, "image", site, {"url": "https://img"}, owner="w1")
    assert await db.extend_effect(rid, "image", owner="w1", lease_seconds=30) is False  # done: nothing to renew


@aio
async def test_an_effect_belongs_to_its_site(db: Database) -> None:
    # The same request id used by another site never gets this site's effect, done or under way.
    rid, mine, theirs = uid("req"), uid("site"), uid("site")
    assert (await db.claim_effect(rid, "generate", mine, owner="w1", lease_seconds=0.001)).state == "acquired"
    await asyncio.sleep(0.01)  # the lease ran out: still not another site's to take over
    assert await db.claim_effect(rid, "generate", theirs, owner="w2", lease_seconds=30) == EffectClaim("foreign")
    await db.complete_effect(rid, "generate", theirs, {"title": "theirs"}, owner="w2")  # refused
    assert await db.get_effect(rid, "generate") is None
    await db.complete_effect(rid, "generate", mine, {"title": "mine"}, owner="w1")
    assert await db.claim_effect(rid, "generate", theirs, owner="w3", lease_seconds=30) == EffectClaim("foreign")
    assert (await db.claim_effect(rid, "generate", mine, owner="w3", lease_seconds=30)).payload == {"title": "mine"}


@aio
async def test_concurrent_calls_share_statements_and_each_gets_its_own_answer(db: Database) -> None:
    site = uid("site")
    done_rid = uid("req")
    assert (await db.claim_effect(done_rid, "image", site, owner="w0", lease_seconds=30)).state == "acquired"
    await db.complete_effect(done_rid, "image", site, {"url": "https://old"}, owner="w0")
    rids = [uid("req") for _ in range(50)]
    ledger = db._batches()
    before = ledger.claim.batches, ledger.complete.batches
    claims = await asyncio.gather(
        *(db.claim_effect(rid, "image", site, owner=f"w-{rid}", lease_seconds=30) for rid in rids),
        db.claim_effect(done_rid, "image", site, owner="w1", lease_seconds=30),
        db.claim_effect(rids[0], "image", uid("site"), owner="other-site", lease_seconds=30),
    )
    assert [c.state for c in claims[:50]] == ["acquired"] * 50
    assert claims[50] == EffectClaim("done", {"url": "https://old"})
    assert claims[51] == EffectClaim("foreign")
    extends_before = ledger.extend.batches
    renewed = await asyncio.gather(
        *(db.extend_effect(rid, "image", owner=f"w-{rid}", lease_seconds=30) for rid in rids),
        db.extend_effect(rids[1], "image", owner="not-the-owner", lease_seconds=30),
    )
    assert renewed == [True] * 50 + [False]
    assert ledger.extend.batches - extends_before <= 3
    await asyncio.gather(*(db.complete_effect(rid, "image", site, {"url": f"https://{rid}"}, owner=f"w-{rid}")
                           for rid in rids))
    assert ledger.claim.batches - before[0] <= 3 and ledger.complete.batches - before[1] <= 3  # not one per call
    assert [await db.get_effect(rid, "image") for rid in rids[:3]] == [{"url": f"https://{rid}"} for rid in rids[:3]]


@aio
async def test_a_payload_postgres_refuses_fails_alone(db: Database) -> None:
    site = uid("site")
    rids = [uid("req") for _ in range(5)]
    for rid in rids:
        assert (await db.claim_effect(rid, "generate", site, owner="w1", lease_seconds=30)).state == "acquired"
    payloads = [{"title": "fine"}] * 5
    payloads[2] = {"title": "nul \u0000 inside"}  # jsonb has no NUL: Postgres refuses this one
    results = await asyncio.gather(
        *(db.complete_effect(rid, "generate", site, payload, owner="w1") for rid, payload in zip(rids, payloads)),
        return_exceptions=True,
    )
    assert isinstance(results[2], asyncpg.PostgresError)
    assert [r for i, r in enumerate(results) if i != 2] == [None] * 4
    assert [await db.get_effect(rid, "generate") for rid in rids] == [
        {"title": "fine"}, {"title": "fine"}, None, {"title": "fine"}, {"title": "fine"}]

