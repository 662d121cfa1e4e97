"""Fixtures shared by the pipeline tests."""
from __future__ import annotations

import pytest

from simulators.config import DEFAULTS, merge_config
from simulators.server import SimulatorServer


@pytest.fixture(scope="module")
def sim_server(request):
    """The provider simulators in this process (a thread), configured with the test module's BASE."""
    with SimulatorServer(config=merge_config(DEFAULTS, request.module.BASE)) as server:
        yield server
