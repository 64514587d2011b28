"""status check constraint; (order_id, created_at, id) index for the keyset-paginated list

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 03:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_check_constraint(
        "ck_communication_events_status",
        "communication_events",
        "status IN ('queued', 'sending', 'sent', 'failed', 'dead')",
    )
    op.drop_index("ix_communication_events_order", table_name="communication_events")
    op.create_index(
        "ix_communication_events_order",
        "communication_events",
        ["order_id", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_communication_events_order", table_name="communication_events")
    op.create_index(
        "ix_communication_events_order",
        "communication_events",
        ["order_id", "created_at"],
        unique=False,
    )
    op.drop_constraint("ck_communication_events_status", "communication_events", type_="check")
