"""Settings of the notifier, from `NOTIFIER_*` environment variables (lists as JSON)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from contracts import Channel, OrderStatus

# The passwords of the local roles (deploy/local/postgres), and of the earlier shared one.
DEV_DATABASE_PASSWORDS = frozenset({"notifier_service_dev", "notifier_owner_dev", "backbone"})


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
            f"NOTIFIER_{name.upper()} has a local dev password; set the real one "
            "(BACKBONE_ENV=dev accepts it, for local development only)"
        )


def database_role(settings: Settings) -> str:
    """The runtime role (the user of database_url), to which the migrations grant."""
    role = make_url(settings.database_url.get_secret_value()).username
    if not role:
        raise ValueError("NOTIFIER_DATABASE_URL names no user: the migrations grant to that role")
    return role


class Settings(BaseSettings):
    # Errors name the setting, never echo the value (which may hold a password).
    model_config = SettingsConfigDict(
        env_prefix="NOTIFIER_", extra="ignore", hide_input_in_errors=True
    )

    # BACKBONE_ENV=dev accepts the local dev passwords; anything else is a real deployment, so
    # one that forgets the setting cannot run on the published defaults.
    environment: Literal["dev", "production"] = Field(
        default="production", validation_alias=AliasChoices("BACKBONE_ENV")
    )
    # What the service runs as: a role with data privileges only (granted by the migrations).
    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://notifier_service:notifier_service_dev@127.0.0.1:5432/notifier"
    )
    # What `migrate` runs as: the database's owner.
    migration_database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://notifier_owner:notifier_owner_dev@127.0.0.1:5432/notifier"
    )
    # Connections kept open to the database and how many more may be opened at a peak. A unit
    # of work that finds them all busy waits up to `database_pool_wait_seconds` for one; then a
    # read answers 503 `database_busy` and consuming retries after a pause.
    database_pool_size: int = Field(default=10, ge=1)
    database_pool_overflow: int = Field(default=10, ge=0)
    database_pool_wait_seconds: float = Field(default=5.0, gt=0)
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "NOTIFIER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    consumer_group: str = "notifier"
    # Up to this many orders.events records per transaction and per offset commit.
    consume_batch_size: int = Field(default=200, ge=1)
    # How long the broker may hold a fetch of orders.events to gather a batch (fetch.max.wait.ms,
    # with fetch.min.bytes 64 KiB): up to this much latency per message, for a transaction
    # and an offset commit shared by every message that came meanwhile.
    consume_wait_ms: int = Field(default=100, ge=0)
    http_host: str = "127.0.0.1"
    http_port: int = 8001

    # The read API's bearer tokens are issued by the order service and checked with its
    # GET /auth/whoami. A token found valid is trusted for token_cache_seconds without
    # asking again, which is also how long a revoked token may still read here (0: always ask).
    order_service_url: str = "http://127.0.0.1:8000"
    order_service_timeout_seconds: float = Field(default=5.0, gt=0)
    token_cache_seconds: float = Field(default=30.0, ge=0)

    # What notifies the customer, e.g. NOTIFIER_NOTIFY_STATUSES='["confirmed","delivered"]'.
    notify_statuses: list[OrderStatus] = [
        OrderStatus.CONFIRMED,
        OrderStatus.PREPARING,
        OrderStatus.READY,
        OrderStatus.OUT_FOR_DELIVERY,
        OrderStatus.DELIVERED,
        OrderStatus.CANCELLED,
    ]
    notify_on_order_created: bool = False
    # Add "sms" (with sms_url set) to text customers who have a phone.
    notify_channels: list[Channel] = [Channel.EMAIL]
    # On SMS only these statuses notify (notify_statuses is for email).
    sms_notify_statuses: list[OrderStatus] = [OrderStatus.OUT_FOR_DELIVERY]

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    # Bounds one whole send (connect, dialogue, data); a slower send counts as failed.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # SMTP sessions are reused; one idle longer than this is closed instead (keep it below the
    # server's idle timeout).
    smtp_idle_seconds: float = Field(default=30.0, ge=0)
    # SMTP sessions open at once, at most (what the mail server allows a client); a send waits
    # for a free one within its timeout.
    smtp_max_sessions: int = Field(default=50, ge=1)
    mail_from: str = "Order Backbone <orders@backbone.local>"
    message_id_domain: str = "backbone.local"

    # The SMS provider: POST JSON {to, body, idempotency_key} with a bearer token.
    sms_url: str | None = None
    sms_token: SecretStr | None = None
    # Bounds one whole SMS request; a slower one counts as failed.
    sms_timeout_seconds: float = Field(default=10.0, gt=0)

    # The dispatcher claims up to a batch of due communications and sends them concurrently.
    dispatch_batch_size: int = Field(default=50, ge=1)
    # Rounds (claim, send, record) in flight at once, so that one waiting on a slow send does
    # not hold up the others (emails among them share smtp_max_sessions).
    dispatch_rounds: int = Field(default=4, ge=1)
    dispatch_poll_interval_seconds: float = Field(default=1.0, gt=0)
    # Once a send finished, its outcome waits this long for the round's other sends, to be
    # stored (and announced) in the same transaction: an event's email and SMS finish a few
    # milliseconds apart.
    dispatch_outcome_linger_ms: int = Field(default=10, ge=0)
    # A claim expires after this; another worker then takes the communication over.
    lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)

    # Pause before redelivering a message whose handling failed for a transient reason
    # (database down), and between reconnects and retries of the background tasks.
    retry_seconds: float = Field(default=1.0, gt=0)
    outbox_poll_interval_seconds: float = Field(default=1.0, gt=0)
    # Woken by a commit, the relay waits this long for the commits right behind it (the other
    # dispatch rounds' outcomes), so that they share its batch and its round trips; an
    # announcement reaches Kafka up to this much later. 50 ms instead of 20 took the notifier
    # from 1.2 transactions per change to 1.0-1.05 at 40 changes/s.
    outbox_linger_ms: int = Field(default=50, ge=0)
    outbox_batch_size: int = Field(default=500, ge=1)
    # Published outbox rows are kept this long (for inspection), then deleted.
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    # On SIGTERM: how long in-flight messages and sends may take to finish.
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)

    # How often the sampled metrics (outbox backlog, communications by status, consumer lag)
    # are refreshed.
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    # "json": one JSON object per line (for log collectors); "text" for reading locally.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.smtp_starttls and self.smtp_use_tls:
            raise ValueError("smtp_starttls and smtp_use_tls exclude each other")
        sends = [self.smtp_timeout_seconds]
        if Channel.SMS in self.notify_channels:
            sends.append(self.sms_timeout_seconds)
        if self.lease_seconds < 2 * max(sends):
            # A lease running out mid-send would let a second worker send the same message.
            raise ValueError("lease_seconds must be at least twice the send timeout of a channel")
        if Channel.SMS in self.notify_channels and not self.sms_url:
            raise ValueError("the sms channel needs sms_url")
        if self.backoff_max_seconds < self.backoff_base_seconds:
            raise ValueError("backoff_max_seconds must not be below backoff_base_seconds")
        return self
