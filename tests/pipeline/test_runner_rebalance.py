"""StageRunner across a rebalance that gives a partition back to the same worker, as Faust delivers it.

Seen in `make test` (test_token_refunds, two workers starting together): the second worker joined
while the first held every partition and had read partition 6 (offsets 0-49). The rebalance revoked
it and gave it back; Faust resumed it before seeking it to its start, and the first record it handed
over was offset 40, where the reading had stopped. The runner took 40 as the start, then skipped
0-39 as "delivered again" once the seek brought them: 40 requests stayed PENDING, nothing asked
for a permit, and the worker never took them up.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.pipeline.test_runner import TP, FakeStream, Recorder, event, make_runner, settle, wait_until


@pytest.fixture
async def started():
    tasks: list[asyncio.Task] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_record_handed_over_before_the_seek_does_not_become_the_partitions_start(started):
    tp = TP("t.blog.requests", 6)
    handler = Recorder()
    stream = FakeStream()
    runner = make_runner(handler)
    starts: dict = {}  # the consumer's: the commit or log start, known once the partition is sought
    rewinds: list = []

    async def rewind(tp_, offset):
        rewinds.append(offset)

    runner.expected_start = lambda tp_: starts.get(tp_)
    runner.rewind = rewind
    started.append(asyncio.ensure_future(runner.consume(stream)))
    try:
        runner.forget({tp})  # the rebalance revoked it (Faust forgets its commit, we the log start)
        stream.feed([event(6, 40, "big")])  # resumed before the seek: where the last reading stopped
        await wait_until(lambda: stream.yielded == 1, "the early record handed over")
        await settle()
        starts[tp] = 0  # the seek: nothing committed, the log starts at 0
        stream.feed([event(6, o, "big") for o in range(50)])

        await wait_until(lambda: stream.acked(6) == list(range(50)), "offsets 0 to 49 acked in order")
        await settle()
        assert sorted(handler.finished) == [(6, o) for o in range(50)], "each offset run once"
        assert rewinds == []
    finally:
        for task in runner._tasks | {t for t in (runner._dispatcher, runner._watchdog) if t}:
            task.cancel()
