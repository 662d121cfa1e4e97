"""store/database.py: the pool's lifecycle and keeping the DSN password out of errors."""
from __future__ import annotations

import pytest

from store.database import Database, DatabaseError, mask_dsn

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
