"""sites.max_queued_bulk: how many bulk requests a site may have pending, apart from its interactive ones

The intake admits a site's bulk requests (`"priority": "bulk"`) against its bulk requests pending
and this limit, its interactive ones against the rest and `max_queued` (streams/api/admission.py):
a site's backfill of hours no longer fills the room its interactive requests need. The range is the
one store/sites.py and the HTTP API enforce; `sites` is small, so the CHECK's scan costs nothing.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE sites ADD COLUMN max_queued_bulk integer NOT NULL DEFAULT 10000
          CONSTRAINT sites_max_queued_bulk_range CHECK (max_queued_bulk BETWEEN 1 AND 1000000)
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE sites DROP COLUMN max_queued_bulk")
