"""the runtime role: reads and appends, never changes an entry; the schema stays the owner's

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from audit.adapters.schema import quoted_runtime_role

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    role = quoted_runtime_role()
    # Only the owner (who runs these migrations) creates objects; PostgreSQL 15 already
    # refuses PUBLIC, earlier versions need this (where it is only a warning if not the owner).
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    # Append-only by privilege, beside the trigger: a role that cannot UPDATE, DELETE or
    # TRUNCATE cannot change the trail even with the trigger disabled.
    op.execute(f"GRANT SELECT, INSERT ON audit_log TO {role}")
    op.execute(f"GRANT SELECT ON alembic_version TO {role}")
    # So are tables of later migrations, unless their migration grants more.
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO {role}"
    )


def downgrade() -> None:
    role = quoted_runtime_role()
    op.execute(
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT ON TABLES FROM {role}"
    )
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {role}")
