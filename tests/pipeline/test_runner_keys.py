"""A runner keeps nothing of a site whose events are all done: any producer may write any keys.

The runner lines events up by their message key before anything is decoded (a record's
site is its key). Another producer writing to blog.requests may use a new key for every
record, up to the broker's size limit (about 1 MiB a key). Before, the runner kept a
credit and a running count for every key it ever saw, for good: such records held the
worker's memory, a little more with each one, though each was dead-lettered at once.
"""
from __future__ import annotations

import gc
import tracemalloc

from streams.pipeline.runner import StageRunner
from tests.pipeline.test_runner import TP, Event, FakeStream, Message, Recorder, make_runner, run, wait_until

__all__ = ["run"]  # the fixture that starts and stops runners

KEY_BYTES = 20_000
RECORDS = 300


def keyed(offset: int) -> Event:
    key = b"%08d" % offset + b"k" * KEY_BYTES  # a new key every record
    return Event(key, b"{}", Message(TP("t.blog.requests", 0), offset, key))


async def test_the_keys_of_finished_events_are_not_kept(run):
    handler = Recorder()
    stream = FakeStream()
    runner: StageRunner = run(make_runner(handler), stream)
    stream.feed([keyed(0)])
    await wait_until(lambda: len(stream.acks) == 1, "the first event acked")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(1, RECORDS + 1):
            stream.feed([keyed(offset)])
        await wait_until(lambda: len(stream.acks) == RECORDS + 1, "every event acked")
        handler.started_sites.clear()  # the test handler's own copies of each site
        handler.running.clear()
        handler.max_running.clear()
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < RECORDS * KEY_BYTES // 10, f"{kept} bytes kept after {RECORDS} events of distinct keys were done"
    assert runner.queued_by_site() == {} and runner.running_by_site() == {}
