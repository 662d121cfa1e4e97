"""sites.updated_at set by the database on every update of a row

Workers read the sites changed since their last read (every two seconds) instead
of every site: the trigger makes `updated_at` move with any change, also one
made by hand in SQL that does not set it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""
from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION sites_touched() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          NEW.updated_at := now();
          RETURN NEW;
        END $$
    """)
    op.execute("CREATE TRIGGER sites_touched BEFORE UPDATE ON sites FOR EACH ROW EXECUTE FUNCTION sites_touched()")


def downgrade() -> None:
    op.execute("DROP TRIGGER sites_touched ON sites")
    op.execute("DROP FUNCTION sites_touched()")
