"""stage_outputs becomes an effect ledger with claims (leases)

A paid or visible effect (OpenAI article, Replicate image, Wix post) is done at most
once per (request_id, stage): a worker first *claims* the row with a lease, does the
effect, then marks it *done* with its payload. A replayed event finds the row done and
reuses the payload instead of paying again; a worker that died mid-effect leaves a
claim whose lease expires, and another worker may take it over.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows were written only after their effect happened, hence DEFAULT 'done'.
    op.execute(
        """
        ALTER TABLE stage_outputs
          ADD COLUMN status text NOT NULL DEFAULT 'done'
              CONSTRAINT stage_outputs_status_check CHECK (status IN ('claimed', 'done')),
          ADD COLUMN claimed_by text,
          ADD COLUMN claimed_until timestamptz,
          ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
          ALTER COLUMN payload DROP NOT NULL
        """
    )
    # A claim has no payload yet, but a done effect must keep one (it is what replays
    # reuse), and a claim without an owner and a lease could never be taken over.
    op.execute(
        """
        ALTER TABLE stage_outputs
          ADD CONSTRAINT stage_outputs_done_has_payload
              CHECK (status <> 'done' OR payload IS NOT NULL),
          ADD CONSTRAINT stage_outputs_claim_has_lease
              CHECK (status <> 'claimed' OR (claimed_by IS NOT NULL AND claimed_until IS NOT NULL))
        """
    )


def downgrade() -> None:
    # Open claims have no payload and mean "effect not done": dropping them is what the
    # old schema (rows only for finished effects) would have held.
    op.execute("DELETE FROM stage_outputs WHERE status = 'claimed'")
    op.execute(
        """
        ALTER TABLE stage_outputs
          DROP CONSTRAINT stage_outputs_claim_has_lease,
          DROP CONSTRAINT stage_outputs_done_has_payload,
          DROP COLUMN updated_at,
          DROP COLUMN claimed_until,
          DROP COLUMN claimed_by,
          DROP COLUMN status,
          ALTER COLUMN payload SET NOT NULL
        """
    )
