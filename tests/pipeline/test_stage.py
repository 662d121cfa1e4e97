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
