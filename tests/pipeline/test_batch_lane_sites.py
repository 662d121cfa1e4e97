"""The bulk lane keeps each site's requests its own: a request id another site already holds in the lane is
refused (RequestOfAnotherSite, as in the real-time lane), never merged with or taken from that site's line."""
from __future__ import annotations

import pytest

from streams.pipeline import batch_collect, generate
from streams.pipeline.stage import RequestOfAnotherSite

from . import test_batch_lane as lane_tests
from .test_batch_lane import RealTime, _realtime_deps, hold_all, requests, states, worker

BASE = lane_tests.BASE  # the simulators' settings (tests/pipeline/conftest.py, sim_server)
db, lane = lane_tests.db, lane_tests.lane  # the lane's fixtures


async def test_a_bulk_request_with_an_id_another_site_holds_in_the_lane_is_refused(db, lane):
    # Before, the second site's request found the first site's line, was told it was held, and was acked:
    # it never ran and never failed.
    (first,) = requests(1, site="shop-a")
    await hold_all(worker(db), [first])
    other = dict(first, site_id="shop-b")
    with pytest.raises(RequestOfAnotherSite):
        await batch_collect.hold(other, worker(db))
    assert await states(db, [first]) == {"queued": 1}


async def test_an_interactive_request_with_the_id_of_another_sites_bulk_line_does_not_take_it(db, lane, monkeypatch):
    # Before, an interactive request of another site with the same id took the line out of the lane
    # ('realtime', nothing to send back): the first site's bulk request was lost, and the other site's
    # request was written and paid in its place.
    (first,) = requests(1, site="shop-a")
    await hold_all(worker(db), [first])
    realtime = RealTime()
    deps = _realtime_deps(monkeypatch, db, realtime)
    with pytest.raises(RequestOfAnotherSite):
        await generate.write_draft(dict(first, site_id="shop-b", priority="interactive"), deps)
    assert realtime.paid == [] and await states(db, [first]) == {"queued": 1}
