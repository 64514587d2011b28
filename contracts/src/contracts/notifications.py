"""notifications.events: the notifier announces each communication's outcome."""

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import Field, TypeAdapter

from contracts.base import Envelope


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class CommunicationEvent(Envelope):
    communication_id: UUID
    dedupe_key: str
    order_id: UUID
    source_event_id: UUID
    channel: Channel
    template: str
    recipient: str
    attempts: int = 0


class CommunicationQueued(CommunicationEvent):
    type: Literal["CommunicationQueued"] = "CommunicationQueued"


class CommunicationSent(CommunicationEvent):
    type: Literal["CommunicationSent"] = "CommunicationSent"
    provider_message_id: str | None = None


class CommunicationFailed(CommunicationEvent):
    type: Literal["CommunicationFailed"] = "CommunicationFailed"
    error: str


class CommunicationDead(CommunicationEvent):
    type: Literal["CommunicationDead"] = "CommunicationDead"
    error: str


class CommunicationSkipped(CommunicationEvent):
    """Recorded but never sent, e.g. because the recipient opted out of the channel."""

    type: Literal["CommunicationSkipped"] = "CommunicationSkipped"
    reason: str


NotificationEvent = Annotated[
    CommunicationQueued
    | CommunicationSent
    | CommunicationFailed
    | CommunicationDead
    | CommunicationSkipped,
    Field(discriminator="type"),
]
notification_event_adapter: TypeAdapter[
    CommunicationQueued
    | CommunicationSent
    | CommunicationFailed
    | CommunicationDead
    | CommunicationSkipped
] = TypeAdapter(NotificationEvent)
