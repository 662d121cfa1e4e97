"""simulators/app.py CollectorClock: the simulator's own collections, in its ledger, cleared by a reset."""
from __future__ import annotations

import gc

from simulators.app import CollectorClock
from simulators.config import DEFAULTS, merge_config
from simulators.state import SimState


def test_each_collection_is_counted_with_its_length_and_cpu_and_a_reset_clears_them():
    state = SimState(merge_config(DEFAULTS, {"seed": 1}))
    assert state.ledger()["collector"] == {"pauses": 0, "seconds": 0.0, "cpu_seconds": 0.0, "longest": 0.0}
    clock = CollectorClock(state)
    gc.callbacks.append(clock)
    try:
        garbage = [[] for _ in range(10_000)]
        for item in garbage:
            item.append(item)  # cycles: something for the collector to walk
        del garbage
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.remove(clock)
    seen = state.collector
    assert seen["pauses"] >= 2
    assert 0 < seen["longest"] <= seen["seconds"]
    assert 0 < seen["cpu_seconds"]
    assert seen["longest"] == max(seen["longest_gen0"], seen["longest_gen2"])  # gc.collect() is generation 2
    assert state.ledger()["collector"]["pauses"] == seen["pauses"]
    state.reset()
    assert state.ledger()["collector"]["pauses"] == 0
