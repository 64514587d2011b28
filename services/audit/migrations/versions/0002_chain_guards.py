"""chain guards: no fork, no privilege to change entries, index for `since`

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Two entries with one predecessor would fork the chain: refuse the second.
    op.create_unique_constraint("uq_audit_log_prev_hash", "audit_log", ["prev_hash"])
    op.create_index("ix_audit_log_occurred_at", "audit_log", ["occurred_at", "id"])
    # Beside the trigger: the owner (the role the service runs as) keeps only INSERT and
    # SELECT, so changing an entry takes an explicit GRANT first. PUBLIC never had these.
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER")


def downgrade() -> None:
    op.execute("GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO CURRENT_USER")
    op.drop_index("ix_audit_log_occurred_at", table_name="audit_log")
    op.drop_constraint("uq_audit_log_prev_hash", "audit_log", type_="unique")
