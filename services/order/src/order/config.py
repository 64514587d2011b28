"""Settings of the order service, from `ORDER_*` environment variables."""

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore")

    database_url: str = "postgresql+asyncpg://backbone:backbone@127.0.0.1:5432/orders"
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("ORDER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    commands_consumer_group: str = "order-commands"
    # How long a command whose handling failed for a transient reason (database down) waits
    # before it is redelivered.
    command_retry_seconds: float = 1.0
    # While the database cannot be reached (a restart, a failover), a request or command
    # waits up to this long and is then retried from the start; after it, HTTP answers 503.
    database_wait_seconds: float = Field(default=10.0, ge=0)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # The relay wakes on NOTIFY; the poll interval only bounds the delay if a notify is lost.
    relay_poll_interval_seconds: float = 1.0
    relay_batch_size: int = Field(default=500, ge=1)
    relay_retry_seconds: float = 1.0
    # False when the relay runs as its own process (`python -m order relay`).
    relay_in_process: bool = True
    outbox_retention_hours: float = Field(default=24.0, ge=0)
    # How often the sampled metrics (outbox backlog, Kafka reachability, consumer lag) are
    # refreshed, and how long one Kafka check may take.
    metrics_interval_seconds: float = Field(default=15.0, gt=0)
    kafka_check_seconds: float = Field(default=1.0, gt=0)
    # "json": one JSON object per line (for log collectors); "text" for reading locally.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
