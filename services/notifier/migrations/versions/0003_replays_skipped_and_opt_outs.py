"""replays counter, `skipped` status, dead-communication index, opt_outs table

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 04:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "communication_events",
        sa.Column("replays", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.drop_constraint("ck_communication_events_status", "communication_events", type_="check")
    op.create_check_constraint(
        "ck_communication_events_status",
        "communication_events",
        "status IN ('queued', 'sending', 'sent', 'failed', 'dead', 'skipped')",
    )
    op.create_index(
        "ix_communication_events_dead",
        "communication_events",
        ["created_at"],
        postgresql_where=sa.text("status = 'dead'"),
    )
    op.create_table(
        "opt_outs",
        sa.Column("channel", sa.String(16), primary_key=True),
        sa.Column("recipient", sa.String(320), primary_key=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )


def downgrade() -> None:
    op.drop_table("opt_outs")
    op.drop_index("ix_communication_events_dead", table_name="communication_events")
    op.drop_constraint("ck_communication_events_status", "communication_events", type_="check")
    op.create_check_constraint(
        "ck_communication_events_status",
        "communication_events",
        "status IN ('queued', 'sending', 'sent', 'failed', 'dead')",
    )
    op.drop_column("communication_events", "replays")
