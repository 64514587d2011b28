"""Settings of the order service, from `ORDER_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# The passwords of the local roles (deploy/local/postgres), and of the earlier shared one.
DEV_DATABASE_PASSWORDS = frozenset({"order_service_dev", "orders_owner_dev", "backbone"})


class DevSecretRefused(ValueError):
    """A secret still has its published local-dev value outside dev mode."""


def refuse_dev_secrets(settings: Settings, *, migrating: bool = False) -> None:
    """Outside dev mode, refuse the published dev password in the URL this run uses (only that
    one: a serving process needs no owner password, a migration no runtime one)."""
    if settings.environment == "dev":
        return
    name = "migration_database_url" if migrating else "database_url"
    url: SecretStr = getattr(settings, name)
    if make_url(url.get_secret_value()).password in DEV_DATABASE_PASSWORDS:
        raise DevSecretRefused(
            f"ORDER_{name.upper()} has a local dev password; set the real one "
            "(BACKBONE_ENV=dev accepts it, for local development only)"
        )


def database_role(settings: Settings) -> str:
    """The runtime role (the user of database_url), to which the migrations grant."""
    role = make_url(settings.database_url.get_secret_value()).username
    if not role:
        raise ValueError("ORDER_DATABASE_URL names no user: the migrations grant to that role")
    return role


class Settings(BaseSettings):
    # Errors name the setting, never echo the value (which may hold a password).
    model_config = SettingsConfigDict(
        env_prefix="ORDER_", extra="ignore", hide_input_in_errors=True
    )

    # BACKBONE_ENV=dev accepts the local dev passwords; anything else is a real deployment, so
    # one that forgets the setting cannot run on the published defaults.
    environment: Literal["dev", "production"] = Field(
        default="production", validation_alias=AliasChoices("BACKBONE_ENV")
    )
    # What the service runs as: a role with data privileges only (granted by the migrations).
    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://order_service:order_service_dev@127.0.0.1:5432/orders"
    )
    # What `migrate` runs as: the database's owner.
    migration_database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://orders_owner:orders_owner_dev@127.0.0.1:5432/orders"
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("ORDER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    commands_consumer_group: str = "order-commands"
    # Commands consumed together are applied in one transaction and committed with one offset
    # commit.
    commands_batch_size: int = Field(default=200, ge=1)
    # How long the broker may hold a fetch of orders.commands to gather a batch (fetch.max.wait.ms,
    # with fetch.min.bytes 64 KiB): up to this much latency per message, for a transaction
    # and an offset commit shared by every message that came meanwhile.
    commands_wait_ms: int = Field(default=100, ge=0)
    # How long a command whose handling failed for a transient reason (database down) waits
    # before it is redelivered.
    command_retry_seconds: float = 1.0
    # While the database cannot be reached (a restart, a failover), a request or command
    # waits up to this long and is then retried from the start; after it, HTTP answers 503.
    database_wait_seconds: float = Field(default=10.0, ge=0)
    # Connections kept open to the database (the bench's raw-asyncpg limit peaks at about 16
    # concurrent transactions), and how many more may be opened at a peak. A request or command
    # that finds them all busy waits up to `database_pool_wait_seconds` for one; then HTTP
    # answers 503 `database_busy`, as waiting longer only lengthens the queue.
    database_pool_size: int = Field(default=20, ge=1)
    database_pool_overflow: int = Field(default=10, ge=0)
    database_pool_wait_seconds: float = Field(default=5.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Tokens looked up are kept in memory, this many at most (0: every request reads its token
    # from the database), and forgotten as soon as any token is revoked: each process listens
    # for the notification a revocation commits (adapters/token_cache.py). Reading the token
    # took a tenth of the service's CPU per change, and a sixth of its database's.
    token_cache_size: int = Field(default=1000, ge=0)
    # How often the connection that hears of revocations is checked with a round trip (and,
    # lost, opened again); kept tokens are trusted only while its last check is less than
    # twice this old.
    token_listener_check_seconds: float = Field(default=2.0, gt=0)
    # The relay wakes on NOTIFY; the poll interval only bounds the delay if a notify is lost.
    relay_poll_interval_seconds: float = 1.0
    # Woken by a commit, the relay waits this long for the commits right behind it, so that
    # they share its batch: a batch costs six round trips to PostgreSQL however many rows it
    # holds. Each event reaches Kafka up to this much later. At 63 changes/s, 50 ms instead of
    # 20 took the order service from 40-44 % of a core to 36-38 %, and the email and HTTP p99
    # down with the CPU it left to the rest.
    relay_linger_ms: int = Field(default=50, ge=0)
    relay_batch_size: int = Field(default=500, ge=1)
    relay_retry_seconds: float = 1.0
    # How long reading the topics back (after a start or a failure) may take before the batch
    # counts as failed and is retried.
    relay_read_back_timeout_seconds: float = Field(default=30.0, gt=0)
    # False when the relay runs as its own process (`python -m order relay`).
    relay_in_process: bool = True
    # On SIGTERM: how long the command in hand and the relay's batch in flight may take.
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    # How long an Idempotency-Key's answer and an upstream command's id are remembered: a retry
    # or redelivery within it has no second effect. Keep it longer than orders.commands keeps a
    # record (7 days by default), so that any command Kafka can redeliver is recognised.
    idempotency_retention_hours: float = Field(default=192.0, gt=0)
    idempotency_purge_interval_seconds: float = Field(default=300.0, gt=0)
    # How often the sampled metrics (outbox backlog, Kafka reachability, consumer lag) are
    # refreshed, and how long one Kafka check may take.
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    kafka_check_seconds: float = Field(default=1.0, gt=0)
    # The admin page reads an order's communications and audit timeline through this service
    # (same origin, so the browser needs no CORS): the notifier's and the audit service's read
    # APIs, asked with the caller's token. Only those reads go there; a change never does.
    notifier_service_url: str = "http://127.0.0.1:8001"
    audit_service_url: str = "http://127.0.0.1:8002"
    # How long such a read may take before it is answered 503 (`<service>_unavailable`).
    peer_timeout_seconds: float = Field(default=5.0, gt=0)
    # "json": one JSON object per line (for log collectors); "text" for reading locally.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
