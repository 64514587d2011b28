"""The order service's tables (SQLAlchemy Core). Alembic migrations create them."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
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

orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("customer_name", String(200), nullable=False),
    Column("customer_email", String(320)),
    Column("customer_phone", String(32)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_orders_status_created", "status", "created_at", "id"),
)

order_status_history = Table(
    "order_status_history",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("order_id", Uuid, ForeignKey("orders.id"), nullable=False),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("from_status", String(32)),
    Column("to_status", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Index("ix_order_status_history_order", "order_id", "version", unique=True),
)

# Transactional outbox: written in the same transaction as the change it announces, relayed
# to Kafka afterwards. `id` order is commit order per order id, because a change takes the
# order's row lock (its UPDATE) before its outbox row is numbered, and holds it until commit.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("topic", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("headers", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("published_at", DateTime(timezone=True)),
    Index(
        "ix_outbox_unpublished",
        "id",
        postgresql_where=text("published_at IS NULL"),
    ),
    # The purge's way to the rows past the retention (see pgstatements.OutboxStatements).
    Index(
        "ix_outbox_published_at",
        "published_at",
        postgresql_where=text("published_at IS NOT NULL"),
    ),
    # Room in each page for its rows' published versions (migration 0008).
    postgresql_with={"fillfactor": 50},
)

OUTBOX_CHANNEL = "order_outbox"
TOKENS_CHANNEL = "order_api_tokens"

# API tokens: only a SHA-256 of each token is stored; the token itself is shown once. Every
# statement that changes them notifies TOKENS_CHANNEL (a trigger: migration 0007).
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
)

# Insert-first idempotency: a request claims (scope, key) in the transaction of its effect;
# a duplicate blocks on the unique index until the first commits, then replays its answer.
# Upstream commands claim their command_id the same way (scope "orders.commands"). Keys are
# deleted once older than the retention, oldest first (hence the index on their age).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(200), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status_code", Integer),
    Column("response", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_idempotency_keys_created_at", "created_at"),
)


# Per topic partition, the offset after the last record the relay saw acknowledged and marked.
# Records past it on Kafka whose outbox rows are unmarked were sent by a relay that stopped
# before marking them; the relay marks those instead of sending them again.
relay_positions = Table(
    "relay_positions",
    metadata,
    Column("topic", String(200), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
)
