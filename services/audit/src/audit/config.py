"""Settings of the audit service, from `AUDIT_*` environment variables."""

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore")

    database_url: str = "postgresql+asyncpg://backbone:backbone@127.0.0.1:5432/audit"
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
    # Pause before a transiently failing batch is redelivered, and between reconnects.
    retry_seconds: float = 1.0
    # How often the consumer lag is read for the metrics.
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    # "json": one JSON object per line (for log collectors); "text" for reading locally.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
