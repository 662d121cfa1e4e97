"""Faust fix 9: aiokafka's metadata updates while the broker is away are paced, and never end its metadata task."""
from __future__ import annotations

import asyncio
import time

import pytest

from streams import faust_fixes


class Client:
    _retry_backoff = 0.02


@pytest.fixture
def updates(monkeypatch):
    outcomes: list = []

    async def update(self, cluster, topics):
        result = outcomes.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(faust_fixes, "_metadata_update", update)
    return outcomes


async def test_failed_updates_return_after_a_pause_that_doubles_and_a_success_resets_it(updates):
    client = Client()
    updates.extend([False, False, False, True, False])
    pauses = []
    for _ in range(5):
        started = time.monotonic()
        ok = await faust_fixes.metadata_update_paced(client, None, set())
        pauses.append((ok, round(time.monotonic() - started, 2)))
    assert [ok for ok, _ in pauses] == [False, False, False, True, False]
    assert [p for _, p in pauses][:3] == pytest.approx([0.02, 0.04, 0.08], abs=0.015)
    assert pauses[3][1] < 0.01 and pauses[4][1] == pytest.approx(0.02, abs=0.015)  # reset by the success


async def test_the_pause_is_capped_and_an_error_is_a_failed_update_not_the_end_of_the_task(updates, monkeypatch):
    monkeypatch.setattr(faust_fixes, "METADATA_RETRY_CAP", 0.05)
    client = Client()
    client._failed_metadata_updates = 5000  # a long outage: no overflow, the cap
    updates.extend([KeyError("from a log filter"), False])
    started = time.monotonic()
    assert await faust_fixes.metadata_update_paced(client, None, set()) is False
    assert await faust_fixes.metadata_update_paced(client, None, set()) is False
    assert time.monotonic() - started == pytest.approx(0.1, abs=0.03)
    updates.append(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):  # cancelling (the client closing) still ends it
        await faust_fixes.metadata_update_paced(client, None, set())
