"""every statement that changes api_tokens notifies order_api_tokens: the processes' memory
of tokens forgets them as a revocation commits

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 03:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Per statement, not per row: one notification is enough to forget every token, and a
    # statement that changed none (a revocation of a name without tokens) costs one too.
    op.execute(
        """
        CREATE FUNCTION notify_api_tokens_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('order_api_tokens', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER api_tokens_changed
        AFTER UPDATE OR DELETE OR TRUNCATE ON api_tokens
        FOR EACH STATEMENT EXECUTE FUNCTION notify_api_tokens_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER api_tokens_changed ON api_tokens")
    op.execute("DROP FUNCTION notify_api_tokens_changed()")
