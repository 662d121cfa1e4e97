from __future__ import annotations

import copy
import time

import pytest

from simulators.config import DEFAULTS, merge_config
from simulators.server import SimulatorServer

# Fast, deterministic base for every test: long window (nothing expires mid-test unless a test
# shortens it on purpose), tiny latencies, no faults, no external load.
BASE = {"window_seconds": 30, "latency_scale": 0.01, "seed": 7}


@pytest.fixture(scope="session")
def sim_server():
    with SimulatorServer(config=merge_config(DEFAULTS, BASE)) as sim:
        yield sim


@pytest.fixture
def sim(sim_server):
    sim_server.configure(merge_config(copy.deepcopy(DEFAULTS), BASE))
    sim_server.reset()
    yield sim_server
    sim_server.configure({"openai": {"external_rpm": 0}, "replicate": {"external_rpm": 0},
                          "wix": {"external_rpm": 0}})


def wait_until(pred, timeout: float = 5.0, interval: float = 0.01):
    """Poll ``pred`` until truthy (returns its value) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
