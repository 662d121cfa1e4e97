"""store/database.py: the pool's lifecycle and keeping the DSN password out of errors."""
from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import AsyncIterator

import asyncpg
import pytest

from store.database import OUTAGES, Database, DatabaseError, ServerEndedConnections, mask_dsn

from .conftest import DSN, aio


# --- secrets --------------------------------------------------------------------------------------------


def test_mask_dsn() -> None:
    assert mask_dsn("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_dsn("postgresql://h/db?user=u&password=pw&sslmode=require") == (
        "postgresql://h/db?user=u&password=***&sslmode=require")
    assert mask_dsn("postgresql://h/db") == "postgresql://h/db"
    assert mask_dsn("postgresql://u:p@s/s@h/db") == "postgresql://u:***@h/db"  # unescaped @ and /
    assert "s3cret" not in repr(Database("postgresql://u:s3cret@h/db"))


@aio
async def test_connect_errors_do_not_leak_the_password(db: Database) -> None:
    wrong_password = DSN.replace("blogstream:blogstream@", "blogstream:Sup3r-S3cret@")
    assert wrong_password != DSN
    closed_port = "postgresql://blogstream:Sup3r-S3cret@127.0.0.1:9/blogstream_test"
    for dsn in (wrong_password, closed_port):
        bad = Database(dsn, min_size=1, max_size=1)
        with pytest.raises(DatabaseError) as info:
            await bad.start()
        text = str(info.value) + repr(info.value)
        assert "Sup3r-S3cret" not in text and "***" in text
        assert info.value.__cause__ is None and info.value.__suppress_context__


@aio
async def test_use_before_start_is_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="start"):
        await Database(DSN).get_site("x")


@aio
async def test_a_connection_goes_back_to_the_pool_without_a_reset_round_trip_yet_clean(db: Database) -> None:
    # No reset statement after each use (it doubled the round trips of every query), but a
    # connection given back inside a transaction is still rolled back before anyone else gets it.
    async with db.pool.acquire() as conn:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("BEGIN; CREATE TEMP TABLE left_behind (x int) ON COMMIT DROP")
    for _ in range(db.pool.get_size()):
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            if await conn.fetchval("SELECT pg_backend_pid()") == pid:
                assert await conn.fetchval("SELECT to_regclass('pg_temp.left_behind')") is None
                break
    else:
        pytest.fail("the connection did not come back to the pool")


# --- connections the server ended ------------------------------------------------------------------------

ENDED = "cannot switch to state 12; another operation (2) is in progress"


class _Conn:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error, self.terminated = error, False

    async def fetchval(self, query: str, *args: object, column: int = 0, timeout: float | None = None) -> object:
        if self.error is not None:
            raise self.error
        return 1

    def terminate(self) -> None:
        self.terminated = True


class _Pool:
    """Hands out the given connections in turn (like asyncpg's pool, most recently returned first)."""

    def __init__(self, *conns: _Conn) -> None:
        self.conns = list(conns)

    def acquire(self) -> contextlib.AbstractAsyncContextManager[_Conn]:
        @contextlib.asynccontextmanager
        async def one() -> AsyncIterator[_Conn]:
            yield self.conns.pop(0)
        return one()


@aio
async def test_a_statement_given_a_connection_the_server_ended_goes_to_another() -> None:
    ended, alive = _Conn(asyncpg.InternalClientError(ENDED)), _Conn()
    pool = ServerEndedConnections(_Pool(ended, alive), max_size=2)  # type: ignore[arg-type]
    assert await pool.fetchval("SELECT 1") == 1
    assert ended.terminated and not alive.terminated


@aio
async def test_other_driver_errors_and_a_pool_of_ended_connections_still_raise() -> None:
    other = _Conn(asyncpg.InternalClientError("unknown error in protocol implementation"))
    with pytest.raises(asyncpg.InternalClientError, match="unknown"):
        await ServerEndedConnections(_Pool(other, _Conn()), max_size=1).fetchval("SELECT 1")  # type: ignore[arg-type]
    assert not other.terminated
    every = [_Conn(asyncpg.InternalClientError(ENDED)) for _ in range(3)]
    with pytest.raises(asyncpg.InternalClientError):
        await ServerEndedConnections(_Pool(*every), max_size=2).fetchval("SELECT 1")  # type: ignore[arg-type]


@aio
async def test_after_postgres_ends_the_pools_sessions_no_statement_fails_on_one_of_them() -> None:
    # What a fast shutdown or pg_terminate_backend does: a FATAL message to each session, then the end
    # of its stream. asyncpg alone handed such connections out (InternalClientError, about once per
    # round); statements already sent when a session ended may still fail, as an outage.
    name = f"ended-{uuid.uuid4().hex[:8]}"
    db = Database(DSN, min_size=5, max_size=5, application_name=name)
    await db.start()
    admin = await asyncpg.connect(DSN)
    errors: list[BaseException] = []
    try:
        for _ in range(5):
            await asyncio.gather(*(db.pool.fetchval("SELECT pg_sleep(0.01)") for _ in range(5)))  # 5 sessions open
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", name)
            for _ in range(20):
                answers = await asyncio.gather(*(db.pool.fetchval("SELECT 1") for _ in range(10)), return_exceptions=True)
                errors += [a for a in answers if isinstance(a, BaseException)]
                await asyncio.sleep(0.005)
    finally:
        await admin.close()
        await db.close()
    assert not [e for e in errors if not isinstance(e, OUTAGES)], errors
