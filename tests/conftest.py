"""Settings for the whole suite.

Property tests run without hypothesis' per-example deadline (200 ms by default): on this
2-core machine, with Kafka, Postgres and the simulators beside the suite (and `-n 2`), one
example now and then takes longer for reasons that are not the code's, and a test must never
fail on timing luck. Speed is measured in the benchmarks (`make bench`), not here.

`make test` runs the unit tests on every core (pytest-xdist), and most share the test database,
each cleaning up rows of its own prefix. The code some of them drive reads a table whole: the bulk
lane assembles every queued line, the global daily cap sums every site's spend. Two such tests at
once took each other's rows (test_batch_lane under `-n 2` alone failed 9 of its 18). The tests of
SHARED_TABLES therefore hold one Postgres advisory lock each while they run, so they run one at a
time across processes, whatever runs them. (xdist's own grouping, `--dist loadgroup`, did not group
here: with pytest 9.2 and xdist 3.8 even a module's static `xdist_group` mark never reached its node ids.)
"""
from typing import Iterator

import psycopg2
import pytest
from hypothesis import settings

settings.register_profile("blogstream", deadline=None)
settings.load_profile("blogstream")

SHARED_TABLES = frozenset({
    "tests.pipeline.test_batch_lane", "tests.pipeline.test_batch_lane_sites", "tests.pipeline.test_batch_costs",
    "tests.pipeline.test_spend_gauges", "tests.store.test_batches", "tests.store.test_batch_caps",
    "tests.store.test_costs", "tests.api.test_costs_totals", "tests.cli.test_costs",
})
SHARED_TABLES_LOCK = 0x626C6F67  # pg_advisory_lock key: "blog"


@pytest.fixture(autouse=True)
def one_at_a_time_on_shared_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.module.__name__ not in SHARED_TABLES:
        yield
        return
    from tests.store.conftest import DSN

    try:
        conn = psycopg2.connect(DSN, connect_timeout=5)
    except psycopg2.Error:  # no test database: the test skips itself
        yield
        return
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (SHARED_TABLES_LOCK,))
        yield
    finally:
        conn.close()  # the session's advisory lock goes with it
