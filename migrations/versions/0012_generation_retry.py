"""blog_generations.retry: which run of the request the row follows (0 the first, n after the n-th retry)

`blogstream retry` (store/sites.py, `reopen_failed`) counts it up and sends the request again with
that number (BlogRequest.retry); every stage record and result carries it. The sink
(store/outcomes.py) lets an event of an earlier run change the row only when it is DONE, so an old
FAILED result read again while a retry runs no longer makes the row FAILED. A constant default
and no CHECK: no table rewrite or scan under the lock (the contract refuses a negative run, and
only the retry counts it up); the seed's SQL does not see the column.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""
from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE blog_generations ADD COLUMN retry integer NOT NULL DEFAULT 0")


def downgrade() -> None:
    op.execute("ALTER TABLE blog_generations DROP COLUMN retry")
