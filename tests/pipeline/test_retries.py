"""Retry waits after an infrastructure failure (streams/pipeline/retries.py); the runner's use of them is in test_runner.py."""
from __future__ import annotations

import asyncio

from streams.pipeline.retries import RetryPauses, retry_delay

TIMEOUT = 10.0


async def wait_until(condition, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.002)


def test_retry_delays_grow_to_a_cap_and_are_spread():
    for failures in range(1, 40):
        ceiling = min(10.0, 2.0 ** failures)
        delays = [retry_delay(failures) for _ in range(50)]
        assert all(0.75 * ceiling <= d <= ceiling for d in delays), (failures, delays)
    assert len({round(retry_delay(8), 6) for _ in range(20)}) > 1  # not all at the same moment


async def test_successes_end_retry_waits_at_most_once_per_interval():
    pauses = RetryPauses(wake_every=3600.0)
    first = [asyncio.ensure_future(pauses.pause(3600.0)) for _ in range(3)]
    await wait_until(lambda: pauses.waiting == 3, "three waiting")
    pauses.succeeded()
    await asyncio.wait(first, timeout=TIMEOUT)
    assert all(t.done() for t in first)

    second = asyncio.ensure_future(pauses.pause(3600.0))
    await wait_until(lambda: pauses.waiting == 1, "one waiting again")
    pauses.succeeded()  # within the interval: a partial outage must not turn into a retry storm
    for _ in range(20):
        await asyncio.sleep(0)
    assert not second.done()
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert pauses.waiting == 0
