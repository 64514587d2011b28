"""What every message on every topic shares: a `type` discriminator and a `schema_version`."""

from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of every contract. Unknown fields are ignored so producers can add fields
    (backwards-compatible evolution); an unknown `type` fails validation and is dead-lettered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = 1


class Actor(BaseModel):
    """Who caused something: a user behind a token, an upstream system, or a service."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    role: str = Field(default="system", max_length=50)


class Envelope(Message):
    """Fields of every event: its own identity, when it happened, and the request chain."""

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    correlation_id: str | None = Field(default=None, max_length=200)
