"""the runtime role: data privileges only; the schema stays the owner's

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 06:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

from notifier.adapters.schema import quoted_runtime_role

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DATA = "SELECT, INSERT, UPDATE, DELETE"


def upgrade() -> None:
    role = quoted_runtime_role()
    # Only the owner (who runs these migrations) creates objects; PostgreSQL 15 already
    # refuses PUBLIC, earlier versions need this (where it is only a warning if not the owner).
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
    op.execute(f"GRANT {DATA} ON ALL TABLES IN SCHEMA public TO {role}")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role}")
    # Tables of later migrations (created by the owner) come with the same privileges.
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {DATA} ON TABLES TO {role}")


def downgrade() -> None:
    role = quoted_runtime_role()
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE {DATA} ON TABLES FROM {role}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {role}")
