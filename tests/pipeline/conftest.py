"""Fixtures shared by the pipeline tests."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest

from simulators.config import DEFAULTS, merge_config
from simulators.server import SimulatorServer
from streams.limiter.client import Permit


@pytest.fixture(scope="module")
def sim_server(request):
    """The provider simulators in this process (a thread), configured with the test module's BASE."""
    with SimulatorServer(config=merge_config(DEFAULTS, request.module.BASE)) as server:
        yield server


class RetryClock:
    """stage.retry_clock and stage._back_off on a fake time: a back-off advances it, nothing waits."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def retry_clock(monkeypatch) -> RetryClock:
    """The stage's retries and looks on a RetryClock."""
    from streams.pipeline import stage

    clock = RetryClock()
    monkeypatch.setattr(stage, "retry_clock", clock)
    monkeypatch.setattr(stage, "_back_off", clock.sleep)
    return clock


class GrantedPermits:
    """Budgets that grant every ask after one turn of the loop, keeping each ask's needs and lane."""

    def __init__(self) -> None:
        self.asked: list[tuple[dict[str, float], str]] = []
        self.slots: list[str] = []  # the slot each ask names (its `request_id`: the run's stage.slot_key)
        self.settled: list[tuple[str, float]] = []  # (budget, what the call used) of each settle

    async def acquire(self, *, site_id, request_id, needs, slot_limit=None, weight=1.0, lane="interactive"):
        self.asked.append((dict(needs), lane))
        self.slots.append(request_id)
        await asyncio.sleep(0)
        return Permit("g", time.time() + 60, dict(needs), 0.0)

    async def observe(self, needs, info, *, throttled):
        pass

    async def settle(self, permit, budget, actual, rate_limit=None):
        self.settled.append((budget, actual))

    @property
    def needs(self) -> list[dict[str, float]]:
        return [needs for needs, _ in self.asked]

    def by_budget(self) -> Counter:
        return Counter(budget for needs in self.needs for budget in needs)

    def by_lane(self) -> Counter:
        return Counter(lane for _, lane in self.asked)


def grant_all(monkeypatch: Any, *modules: Any) -> GrantedPermits:
    """Every permit the `modules` ask for (each one's `budgets`) granted by one GrantedPermits."""
    granted = GrantedPermits()
    for module in modules:
        monkeypatch.setattr(module, "budgets", granted)
    return granted
