"""Settings of the notifier, from `NOTIFIER_*` environment variables."""

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import OrderStatus


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFIER_", extra="ignore")

    database_url: str = "postgresql+asyncpg://backbone:backbone@127.0.0.1:5432/notifier"
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "NOTIFIER_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    consumer_group: str = "notifier"
    http_host: str = "127.0.0.1"
    http_port: int = 8001

    # Which status changes email the customer (a JSON list in the environment).
    email_statuses: list[OrderStatus] = [
        OrderStatus.CONFIRMED,
        OrderStatus.PREPARING,
        OrderStatus.READY,
        OrderStatus.OUT_FOR_DELIVERY,
        OrderStatus.DELIVERED,
        OrderStatus.CANCELLED,
    ]

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "Order Backbone <orders@backbone.local>"
    message_id_domain: str = "backbone.local"

    dispatch_batch_size: int = Field(default=50, ge=1)
    dispatch_concurrency: int = Field(default=10, ge=1)
    dispatch_poll_interval_seconds: float = 0.5
    lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)

    # Pause before a transiently failing message is redelivered, and between reconnects.
    retry_seconds: float = 1.0
    outbox_poll_interval_seconds: float = 0.5
    outbox_batch_size: int = Field(default=500, ge=1)
