"""openai_batches.claimed_at: when a batch's claim was last taken or renewed

A claim last renewed before Postgres (re)started lapsed while its owner could not renew it; it is
taken over only once the server has been up for a whole lease (store/batches.py, `claim_batches`),
as an effect's claim is (store/effects.py). This column says when the claim was renewed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE openai_batches ADD COLUMN claimed_at timestamptz NOT NULL DEFAULT now()")


def downgrade() -> None:
    op.execute("ALTER TABLE openai_batches DROP COLUMN claimed_at")
