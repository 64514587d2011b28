"""`<topic>.dlq`: a message a consumer could not take, kept whole with the reason."""

from typing import Literal

from pydantic import AwareDatetime, Field

from contracts.base import Message, utc_now


class DeadLetter(Message):
    type: Literal["DeadLetter"] = "DeadLetter"
    source_topic: str
    partition: int
    offset: int
    key: str | None
    # The original bytes, decoded as UTF-8 with replacement so a non-text payload still fits.
    payload: str
    headers: dict[str, str]
    reason: str
    consumer_group: str
    dead_lettered_at: AwareDatetime = Field(default_factory=utc_now)
