"""Alembic environment for blogstream (raw-SQL migrations, no ORM metadata).

Database URL, first match wins:
  1. config.attributes["database_url"]   (set by stack/stack.py when called in-process)
  2. `alembic -x database_url=...`
  3. env BLOGSTREAM_DATABASE_URL
  4. postgresql://blogstream:blogstream@127.0.0.1:${PG_PORT:-55432}/blogstream
The URL is rewritten to the sync psycopg2 driver (postgresql+psycopg2://).
"""
from __future__ import annotations

import os
import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool, text

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None


def sync_url(url: str) -> str:
    """postgres:// | postgresql:// | postgresql+asyncpg:// -> postgresql+psycopg2://"""
    return re.sub(r"^(postgres|postgresql)(\+\w+)?://", "postgresql+psycopg2://", url)


def database_url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("database_url")
        or os.environ.get("BLOGSTREAM_DATABASE_URL")
        or f"postgresql://blogstream:blogstream@127.0.0.1:{os.environ.get('PG_PORT', '55432')}/blogstream"
    )
    return sync_url(url)


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


# One run at a time per database: a run started while another migrates (two deploy jobs, several
# workers' init containers, parallel test sessions on the harness's template) waits for it, then
# reads the revision it left. Without it, each read an empty schema and all but one failed creating
# the same tables. A session lock: released when the connection closes, however the run ends.
MIGRATION_LOCK = 0x626C6F67  # "blog"


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()  # the lock outlives this transaction; alembic's own begin below
            context.configure(connection=connection, target_metadata=target_metadata,
                              transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
