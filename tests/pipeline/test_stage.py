"""streams/pipeline/stage.py effect_once: an effect's result is recorded even when Postgres is away at that moment."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import asyncpg
import pytest

from store.effects import EffectClaim
from streams.pipeline import stage

pytestmark = pytest.mark.asyncio


class Ledger:
    """The effect ledger's methods; `complete_effect` raises each of `failures` in turn first."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.completed: list[dict] = []
        self.released = 0
        self.tries = 0

    async def claim_effect(self, request_id, stage_, site_id, *, owner, lease_seconds):
        if self.completed:
            return EffectClaim("done", self.completed[0])
        return EffectClaim("acquired")

    async def complete_effect(self, request_id, stage_, site_id, payload, *, owner):
        self.tries += 1
        if self.failures:
            raise self.failures.pop(0)
        self.completed.append(payload)

    async def release_effect(self, request_id, stage_, *, owner):
        self.released += 1

    async def extend_effect(self, *args, **kwargs):
        return True


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(stage, "COMPLETE_RETRY_SECONDS", (0.001, 0.01))


async def test_a_result_postgres_could_not_take_is_recorded_once_it_is_back_and_paid_once():
    ledger = Ledger(ConnectionRefusedError(111, "refused"), asyncpg.exceptions.CannotConnectNowError("shutting down"),
                    asyncpg.InterfaceError("connection is closed"))
    deps = SimpleNamespace(db=ledger, worker_id="w1")
    paid = []

    async def produce():
        paid.append(1)
        return {"article": "a"}

    assert await stage.effect_once(deps, "r1", "generate", "s1", produce) == ({"article": "a"}, False)
    assert ledger.completed == [{"article": "a"}] and ledger.tries == 4 and ledger.released == 0
    assert await stage.effect_once(deps, "r1", "generate", "s1", produce) == ({"article": "a"}, True)
    assert paid == [1]


async def test_a_result_postgres_refuses_fails_the_step_at_once_and_keeps_the_claim():
    ledger = Ledger(asyncpg.exceptions.UntranslatableCharacterError("\\u0000 cannot be converted to text"))

    async def produce():
        return {"article": "\x00"}

    with pytest.raises(asyncpg.DataError):
        await stage.effect_once(SimpleNamespace(db=ledger, worker_id="w1"), "r1", "generate", "s1", produce)
    assert ledger.tries == 1 and ledger.released == 0  # the effect happened: its claim runs out, it is not freed


async def test_a_failed_effect_still_frees_its_claim():
    ledger = Ledger()

    async def produce():
        await asyncio.sleep(0)
        raise RuntimeError("the provider said no")

    with pytest.raises(RuntimeError):
        await stage.effect_once(SimpleNamespace(db=ledger, worker_id="w1"), "r1", "generate", "s1", produce)
    assert ledger.released == 1 and ledger.tries == 0


class Renewed:
    """`extend_effects` of a ledger: records each round's claims; fails when told."""

    def __init__(self) -> None:
        self.rounds: list[list[tuple]] = []
        self.fail = False

    async def extend_effects(self, claims, *, lease_seconds):
        if self.fail:
            raise ConnectionRefusedError(111, "refused")
        self.rounds.append(list(claims))
        return [True] * len(claims)


async def test_every_claim_held_is_renewed_together_by_one_task_and_dropped_when_done(monkeypatch):
    renewals = stage.ClaimRenewals()
    monkeypatch.setattr(renewals, "BATCH", 2)
    a, b = Renewed(), Renewed()
    for n in range(3):
        renewals.hold(a, f"r{n}", "generate", f"w:{n}")
    renewals.hold(b, "r9", "image", "w:9")
    task = renewals._task
    assert task is not None and len(renewals) == 4
    renewals.drop("w:1")
    await renewals.renew()
    assert a.rounds == [[("r0", "generate", "w:0"), ("r2", "generate", "w:2")]]  # not the dropped one
    assert b.rounds == [[("r9", "image", "w:9")]]  # a statement per ledger
    for n in range(3, 6):
        renewals.hold(a, f"r{n}", "generate", f"w:{n}")
    await renewals.renew()
    assert [len(r) for r in a.rounds[1:]] == [2, 2, 1]  # at most BATCH claims a statement
    a.fail = True
    await renewals.renew()  # a round that fails is logged; the next one tries again
    assert b.rounds[-1] == [("r9", "image", "w:9")] and renewals._task is task  # one task for every claim
    task.cancel()


async def test_an_effect_holds_its_claim_for_renewal_only_while_it_is_under_way():
    ledger = Ledger()
    seen = []

    async def produce():
        seen.append(len(stage.CLAIMS))
        return {"article": "a"}

    async def fails():
        seen.append(len(stage.CLAIMS))
        raise RuntimeError("the provider said no")

    before = len(stage.CLAIMS)
    await stage.effect_once(SimpleNamespace(db=ledger, worker_id="w1"), "r1", "generate", "s1", produce)
    with pytest.raises(RuntimeError):
        await stage.effect_once(SimpleNamespace(db=Ledger(), worker_id="w1"), "r2", "generate", "s1", fails)
    assert seen == [before + 1, before + 1] and len(stage.CLAIMS) == before
