"""Fixtures for tests that run real workers on the local stack (`make stack-up`)."""
from __future__ import annotations

import pytest

from stack.harness import Outcomes, Pipeline, Simulators, database_url

# Fast providers for tests: latencies scaled down, limits at their defaults.
FAST = {"latency_scale": 0.05, "window_seconds": 60, "openai": {"error_rate": 0.0, "external_rpm": 0},
        "replicate": {"error_rate": 0.0, "external_rpm": 0}, "wix": {"error_rate": 0.0, "external_rpm": 0}}


@pytest.fixture
def sim():
    simulators = Simulators()
    simulators.reset()
    simulators.configure(FAST)
    yield simulators
    simulators.reset()
    simulators.configure(FAST)


@pytest.fixture
async def outcomes():
    db = Outcomes(database_url("blogstream_test"))
    await db.clear()
    return db


@pytest.fixture
def pipeline():
    p = Pipeline()
    yield p
    p.stop()
