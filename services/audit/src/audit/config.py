"""Settings of the audit service, from `AUDIT_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

# The passwords of the local roles (deploy/local/postgres), and of the earlier shared one.
DEV_DATABASE_PASSWORDS = frozenset({"audit_service_dev", "audit_owner_dev", "backbone"})


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
            f"AUDIT_{name.upper()} has a local dev password; set the real one "
            "(BACKBONE_ENV=dev accepts it, for local development only)"
        )


def database_role(settings: Settings) -> str:
    """The runtime role (the user of database_url), to which the migrations grant."""
    role = make_url(settings.database_url.get_secret_value()).username
    if not role:
        raise ValueError("AUDIT_DATABASE_URL names no user: the migrations grant to that role")
    return role


class Settings(BaseSettings):
    # Errors name the setting, never echo the value (which may hold a password).
    model_config = SettingsConfigDict(
        env_prefix="AUDIT_", extra="ignore", hide_input_in_errors=True
    )

    # BACKBONE_ENV=dev accepts the local dev passwords; anything else is a real deployment, so
    # one that forgets the setting cannot run on the published defaults.
    environment: Literal["dev", "production"] = Field(
        default="production", validation_alias=AliasChoices("BACKBONE_ENV")
    )
    # What the service runs as: a role with data privileges only (granted by the migrations).
    database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://audit_service:audit_service_dev@127.0.0.1:5432/audit"
    )
    # What `migrate` runs as: the database's owner.
    migration_database_url: SecretStr = SecretStr(
        "postgresql+asyncpg://audit_owner:audit_owner_dev@127.0.0.1:5432/audit"
    )
    # Connections kept open to the database and how many more may be opened at a peak. A unit
    # of work that finds them all busy waits up to `database_pool_wait_seconds` for one; then a
    # read answers 503 `database_busy` and consuming retries after a pause.
    database_pool_size: int = Field(default=10, ge=1)
    database_pool_overflow: int = Field(default=10, ge=0)
    database_pool_wait_seconds: float = Field(default=5.0, gt=0)
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("AUDIT_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    consumer_group: str = "audit"
    http_host: str = "127.0.0.1"
    http_port: int = 8002

    # The read API's bearer tokens are issued by the order service and checked with its
    # GET /auth/whoami. A token found valid is trusted for token_cache_seconds without
    # asking again, which is also how long a revoked token may still read here (0: always ask).
    order_service_url: str = "http://127.0.0.1:8000"
    order_service_timeout_seconds: float = Field(default=5.0, gt=0)
    token_cache_seconds: float = Field(default=30.0, ge=0)

    # Most messages consumed, and appended to the chain in one transaction, at a time.
    batch_size: int = Field(default=500, ge=1)
    # How long the broker may hold a fetch of the audited topics to gather a batch
    # (fetch.max.wait.ms, with fetch.min.bytes 64 KiB): up to this much latency per message,
    # for a transaction and an offset commit shared by every message that came meanwhile.
    batch_wait_ms: int = Field(default=100, ge=0)
    # Pause before a transiently failing batch is redelivered, and between reconnects.
    retry_seconds: float = 1.0
    # On SIGTERM: how long the batch in hand may take to finish.
    shutdown_grace_seconds: float = Field(default=15.0, ge=0)
    # How often the consumer lag is read for the metrics.
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    # "json": one JSON object per line (for log collectors); "text" for reading locally.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
