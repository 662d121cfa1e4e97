"""openai_batch_lines.max_usd: what a bulk line may cost at most, so a batch never spends past a site's cap

A line's worst case (its prompt estimate and its max_tokens at the model's batch prices,
0 for a model without a price) is known when it is held. A file takes a capped site's lines
only while their worst case fits in what the site has left under its caps, less the worst
case of its lines in running batches (store/batches.py, `assemble_batch`); that reserved
amount counts as spent when the caps hold a site (store/costs.py, `refresh_budgets`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""
from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE openai_batch_lines ADD COLUMN max_usd numeric(20, 10) NOT NULL DEFAULT 0 "
               "CHECK (max_usd >= 0)")
    op.execute("CREATE INDEX openai_batch_lines_batched_by_site ON openai_batch_lines (site_id) "
               "WHERE state = 'batched'")
    op.execute("CREATE INDEX openai_batch_lines_queued_by_site ON openai_batch_lines (site_id, model, queued_at) "
               "WHERE state = 'queued'")


def downgrade() -> None:
    op.execute("DROP INDEX openai_batch_lines_queued_by_site")
    op.execute("DROP INDEX openai_batch_lines_batched_by_site")
    op.execute("ALTER TABLE openai_batch_lines DROP COLUMN max_usd")
