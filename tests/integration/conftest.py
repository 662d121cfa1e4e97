"""Fixtures for tests that run real workers on the local stack (`make stack-up`).

Each test gets its own simulator process, its own database (a copy of the
migrated template) and its own topics and consumer group, so tests never see
each other's limits, rows or events, even when run side by side.
"""
from __future__ import annotations

import pytest

from stack.harness import Outcomes, Pipeline, Simulators

# Fast providers for tests: latencies scaled down, limits at their defaults.
FAST = {"latency_scale": 0.05, "window_seconds": 60, "openai": {"error_rate": 0.0, "external_rpm": 0},
        "replicate": {"error_rate": 0.0, "external_rpm": 0}, "wix": {"error_rate": 0.0, "external_rpm": 0}}


@pytest.fixture
def sim():
    simulators = Simulators.start(FAST)
    yield simulators
    simulators.stop()


@pytest.fixture
async def outcomes():
    db = await Outcomes.private()
    yield db
    await db.drop()


@pytest.fixture
def pipeline(sim, outcomes):
    p = Pipeline(database=outcomes.database, sim_url=sim.url)
    yield p
    p.stop()
