"""The notifier's tables (SQLAlchemy Core). Alembic migrations create them."""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

communication_events = Table(
    "communication_events",
    metadata,
    Column("id", Uuid, primary_key=True),
    # Unique: the insert-first claim that makes each communication happen once.
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("order_id", Uuid, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("template", String(100), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("context", JSONB, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text),
    Column("provider_message_id", String(200)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("lease_owner", String(100)),
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("sent_at", DateTime(timezone=True)),
    # How often an operator replayed it after it went dead.
    Column("replays", Integer, nullable=False, server_default=text("0")),
    # The W3C trace context of the event that asked for it: its sending joins that trace.
    Column("trace_context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    CheckConstraint(
        "status IN ('queued', 'sending', 'sent', 'failed', 'dead', 'skipped')",
        name="ck_communication_events_status",
    ),
    Index("ix_communication_events_order", "order_id", "created_at", "id"),
    Index(
        "ix_communication_events_due",
        "next_attempt_at",
        postgresql_where=text("status IN ('queued', 'failed')"),
    ),
    Index("ix_communication_events_dead", "created_at", postgresql_where=text("status = 'dead'")),
    Index(
        "ix_communication_events_leased",
        "lease_until",
        postgresql_where=text("status = 'sending'"),
    ),
)

# Who asked to get nothing on a channel; the recipient is normalised as in the dedupe key.
opt_outs = Table(
    "opt_outs",
    metadata,
    Column("channel", String(16), primary_key=True),
    Column("recipient", String(320), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# Transactional outbox for notifications.events: each change of a communication is announced
# from the transaction that makes it; the relay publishes the rows, later deletes them.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("payload", JSONB, nullable=False),
    # Kafka headers to publish it with: the trace context of the change it announces.
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("published_at", DateTime(timezone=True)),
    Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    # The purge's way to the rows past the retention (see pgstatements.OutboxStatements).
    Index(
        "ix_outbox_published_at", "published_at", postgresql_where=text("published_at IS NOT NULL")
    ),
    # Room in each page for its rows' published versions (migration 0007).
    postgresql_with={"fillfactor": 50},
)
