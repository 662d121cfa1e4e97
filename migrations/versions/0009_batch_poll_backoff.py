"""openai_batches.poll_failures, next_poll_at: a batch OpenAI cannot give for now is looked at less often

A poll that fails for a passing reason (a 429, a 5xx, no answer) or because OpenAI refused our key
(401/403: an operator must fix it; the articles wait at OpenAI) counts in `poll_failures`, and the
batch is not looked at again before `next_poll_at` (the poll interval, doubled after each failure in a
row, at most 64 intervals). A poll that reads the batch sets both back. A permanent answer (a 404 for a
batch or a file that is gone, another 4xx) ends the batch: its lines go on without it (batch_poll.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""
from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE openai_batches ADD COLUMN poll_failures integer NOT NULL DEFAULT 0, "
               "ADD COLUMN next_poll_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE openai_batches DROP COLUMN next_poll_at, DROP COLUMN poll_failures")
