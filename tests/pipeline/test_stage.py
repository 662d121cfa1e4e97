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


@pytest.mark.parametrize("rolled_back", [
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    asyncpg.exceptions.SerializationError("could not serialize access due to concurrent update"),
])
async def test_a_result_postgres_rolled_back_is_recorded_again_and_paid_once(rolled_back):
    # A deadlock or a serialization failure rolls the statement back: sent again, it goes through. Given
    # up, the result was lost while the claim stayed: the event's next try took the claim over once its
    # lease ran out and paid the provider again.
    ledger = Ledger(rolled_back)
    deps = SimpleNamespace(db=ledger, worker_id="w1")
    paid = []

    async def produce():
        paid.append(1)
        return {"article": "a"}

    assert await stage.effect_once(deps, "r1", "generate", "s1", produce) == ({"article": "a"}, False)
    assert ledger.completed == [{"article": "a"}] and ledger.tries == 2 and paid == [1]


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


async def test_a_failed_effect_whose_claim_cannot_be_freed_still_tells_why_it_failed():
    # Postgres away at the release: the claim runs out by its lease instead, and the step's own failure
    # (here: the article, paid for, breaks the rules) is what the stage acts on. Raising the release's
    # ConnectionRefusedError instead made the event an outage to try again: a second article paid for.
    class Unreleasable(Ledger):
        async def release_effect(self, request_id, stage_, *, owner):
            raise ConnectionRefusedError(111, "refused")

    async def produce():
        await asyncio.sleep(0)
        raise stage.StageFailed("generate", "r1", "s1", "the model's article breaks the rules for articles")

    with pytest.raises(stage.StageFailed):
        await stage.effect_once(SimpleNamespace(db=Unreleasable(), worker_id="w1"), "r1", "generate", "s1", produce)


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


class LeasedLedger:
    """The effect ledger with leases on Postgres's clock (store/effects.py's rules); `down`: Postgres away."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}
        self.down = False

    def _reach(self) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "refused")

    async def claim_effect(self, request_id, stage_, site_id, *, owner, lease_seconds):
        self._reach()
        now, row = asyncio.get_running_loop().time(), self.rows.get((request_id, stage_))
        if row is None or (row["status"] == "claimed" and row["until"] < now):  # fresh, or an expired lease taken over
            self.rows[(request_id, stage_)] = {"status": "claimed", "owner": owner, "until": now + lease_seconds}
            return EffectClaim("acquired")
        if row["status"] == "done":
            return EffectClaim("done", row["payload"])
        return EffectClaim("busy")

    async def complete_effect(self, request_id, stage_, site_id, payload, *, owner):
        self._reach()
        row = self.rows.get((request_id, stage_))
        if row is None or row["status"] == "claimed":
            self.rows[(request_id, stage_)] = {"status": "done", "payload": payload}

    async def release_effect(self, request_id, stage_, *, owner):
        self._reach()
        row = self.rows.get((request_id, stage_))
        if row is not None and row["status"] == "claimed" and row["owner"] == owner:
            del self.rows[(request_id, stage_)]

    async def extend_effects(self, claims, *, lease_seconds):
        self._reach()
        now = asyncio.get_running_loop().time()
        for request_id, stage_, owner in claims:
            row = self.rows.get((request_id, stage_))
            if row is not None and row["status"] == "claimed" and row["owner"] == owner:
                row["until"] = now + lease_seconds
        return [True] * len(claims)


async def test_a_copy_of_an_event_waiting_on_this_workers_claim_does_not_pay_again_after_an_outage(monkeypatch):
    # Two copies of one request's record (a producer's retry) run on one worker. The first pays the provider;
    # the second waits for its claim. Postgres goes away for longer than a lease (the claim cannot be renewed)
    # and the provider answers meanwhile: its result waits to be recorded. Times are a tenth of the real ones
    # (a 3 s lease renewed every second), the copy's one-second look at a busy claim is kept.
    monkeypatch.setattr(stage, "EFFECT_LEASE_SECONDS", 3.0)
    monkeypatch.setattr(stage, "COMPLETE_RETRY_SECONDS", (0.5, 10.0))
    monkeypatch.setattr(stage, "CLAIMS", stage.ClaimRenewals())
    ledger = LeasedLedger()
    deps = SimpleNamespace(db=ledger, worker_id="w1")
    paid: list[str] = []
    calling, answered = asyncio.Event(), asyncio.Event()

    async def produce():
        paid.append("call")
        calling.set()
        await answered.wait()
        return {"article": f"paid {len(paid)}"}

    async def run_event():
        """A stage event as the runner runs it: an outage fails the try, the event runs again soon after."""
        while True:
            try:
                return await stage.effect_once(deps, "r1", "generate", "s1", produce)
            except OSError:
                await asyncio.sleep(0.05)

    first = asyncio.ensure_future(run_event())
    await calling.wait()
    second = asyncio.ensure_future(run_event())  # finds the claim busy and waits
    await asyncio.sleep(0.5)
    ledger.down = True
    await asyncio.sleep(2.9)  # the lease runs out
    answered.set()  # the provider answers; Postgres is still away
    await asyncio.sleep(0.2)
    ledger.down = False  # 3.1 s of outage

    try:
        results = await asyncio.wait_for(asyncio.gather(first, second), timeout=15)
    finally:
        stage.CLAIMS._task.cancel()
    assert paid == ["call"], f"the provider was paid {len(paid)} times for one request"
    assert results[0][0] == results[1][0] == {"article": "paid 1"}
