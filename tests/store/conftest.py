"""Fixtures for the store/ tests against the real `blogstream_test` database.

Needs the local stack (`stack/stack.sh up`) with migrations at head. Isolation from other
people using the same database:
* every test uses fresh uuid ids (requests, sites, effects);
* tests whose figures are global (health, counts, the seed's retry UPDATE) run inside one
  REPEATABLE READ transaction that is rolled back: they see a frozen snapshot, their
  writes never become visible, and concurrent writers cannot change the numbers.
"""
from __future__ import annotations

import asyncio
import os
import sys
import uuid
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

# The repo root may not be on sys.path (pytest run from the venv entry point, no pythonpath
# setting); make `import store` work either way.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from store.database import Database, DatabaseError  # noqa: E402
from store.outcomes import OutcomeRow  # noqa: E402

DSN = os.environ.get(
    "BLOGSTREAM_TEST_DATABASE_URL",
    f"postgresql://blogstream:blogstream@127.0.0.1:{os.environ.get('PG_PORT', '55432')}/blogstream_test",
)

aio = pytest.mark.asyncio(loop_scope="module")


# Every id these tests write starts with RUN, so teardown can delete exactly their own rows.
RUN = f"pgtest{uuid.uuid4().hex[:8]}"


def uid(prefix: str = "t") -> str:
    return f"{RUN}-{prefix}-{uuid.uuid4().hex}"


def now() -> datetime:
    return datetime.now(timezone.utc)


def ev(request_id: str, stage: str, at: datetime, site_id: str = "site-test", **fields: Any) -> OutcomeRow:
    """An OutcomeRow for `stage` with the status and rank the stage implies."""
    status = {"published": "DONE", "failed": "FAILED", "cancelled": "CANCELLED"}.get(stage, "PENDING")
    rank = {"requested": 0, "drafted": 1, "illustrated": 2}.get(stage, 3)
    return OutcomeRow(request_id, site_id, status, stage, rank, at, **fields)


class _OneConnection:
    """Pool stand-in that runs every query on one connection (inside the test's transaction)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@asynccontextmanager
async def reachable_database(*, max_size: int = 4) -> AsyncIterator[Database]:
    """A started Database on the test database, closed after; the test is skipped when it cannot be reached."""
    database = Database(DSN, min_size=1, max_size=max_size)
    try:
        await database.start()
    except DatabaseError as exc:
        pytest.skip(f"test database not reachable (stack/stack.sh up): {exc}")
    try:
        yield database
    finally:
        await database.close()


@contextmanager
def database_on_own_loop(*, max_size: int = 2) -> Iterator[tuple[asyncio.AbstractEventLoop, Database]]:
    """(loop, Database) on a loop of its own, for hypothesis tests (it runs the examples synchronously);
    skipped when the test database cannot be reached, closed after."""
    loop = asyncio.new_event_loop()
    try:
        opened = reachable_database(max_size=max_size)
        database = loop.run_until_complete(opened.__aenter__())
        try:
            yield loop, database
        finally:
            loop.run_until_complete(opened.__aexit__(None, None, None))
    finally:
        loop.close()


# --- fixtures ------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db():
    database = Database(DSN, min_size=2, max_size=25)
    try:
        await database.start()
    except DatabaseError as exc:
        pytest.skip(f"test database not reachable (stack/stack.sh up): {exc}")
    has_claims = await database.pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'stage_outputs' AND column_name = 'claimed_until')"
    )
    if not has_claims:
        await database.close()
        pytest.fail("blogstream_test is not migrated: BLOGSTREAM_DATABASE_URL=... alembic upgrade head")
    yield database
    # Leave no rows behind: other suites share blogstream_test (5,000 PENDING rows per run
    # would soon skew queue-size checks).
    pattern = f"{RUN}-%"
    await database.pool.execute("DELETE FROM blog_generations WHERE id LIKE $1", pattern)
    await database.pool.execute("DELETE FROM stage_outputs WHERE request_id LIKE $1", pattern)
    await database.pool.execute("DELETE FROM sites WHERE site_id LIKE $1", pattern)
    await database.close()


@pytest_asyncio.fixture(loop_scope="module")
async def tx(db: Database):
    """A Database whose queries all run in one REPEATABLE READ transaction, rolled back at the end."""
    async with db.pool.acquire() as conn:
        transaction = conn.transaction(isolation="repeatable_read")
        await transaction.start()
        view = Database(DSN)
        view._pool = _OneConnection(conn)  # type: ignore[assignment]  # test-only: bind to the tx
        try:
            yield view, conn
        finally:
            await transaction.rollback()
