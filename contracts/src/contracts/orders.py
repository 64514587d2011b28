"""Messages about orders: upstream commands, their results, and the order service's events."""

from functools import lru_cache
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
)
from pydantic.networks import validate_email

from contracts.base import Actor, Envelope, Message, utc_now
from contracts.statuses import OrderStatus


@lru_cache(maxsize=8192)
def _normalised_email(address: str) -> str:
    return validate_email(address)[1]


# pydantic's EmailStr (email-validator, no DNS lookup: a pure function of the text), with each
# valid address remembered: an order's address comes with every one of its events, and checking
# it again was most of the CPU a consumer spent parsing them. An invalid one is checked each time.
Email = Annotated[
    str, AfterValidator(_normalised_email), WithJsonSchema({"type": "string", "format": "email"})
]


class Customer(BaseModel):
    """How the customer is reached; the notifier addresses emails and SMS from this."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    email: Email | None = None
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9 ()-]{5,32}$")


# --- orders.commands -------------------------------------------------------------------


class CreateOrder(Message):
    type: Literal["CreateOrder"] = "CreateOrder"
    command_id: UUID
    order_id: UUID = Field(default_factory=uuid4)
    customer: Customer
    actor: Actor
    issued_at: AwareDatetime = Field(default_factory=utc_now)
    correlation_id: str | None = Field(default=None, max_length=200)


class ChangeOrderStatus(Message):
    type: Literal["ChangeOrderStatus"] = "ChangeOrderStatus"
    command_id: UUID
    order_id: UUID
    status: OrderStatus
    reason: str | None = Field(default=None, max_length=1000)
    expected_version: int | None = Field(default=None, ge=1)
    actor: Actor
    issued_at: AwareDatetime = Field(default_factory=utc_now)
    correlation_id: str | None = Field(default=None, max_length=200)


OrderCommand = Annotated[CreateOrder | ChangeOrderStatus, Field(discriminator="type")]
order_command_adapter: TypeAdapter[CreateOrder | ChangeOrderStatus] = TypeAdapter(OrderCommand)


# --- orders.command-results ------------------------------------------------------------
# One result per command_id; `event_id` identifies the result message itself.


class CommandAccepted(Envelope):
    type: Literal["CommandAccepted"] = "CommandAccepted"
    command_id: UUID
    order_id: UUID
    actor: Actor
    version: int


class CommandRejected(Envelope):
    """A refused command, with a machine-readable `code` and a human `reason`."""

    type: Literal["CommandRejected"] = "CommandRejected"
    command_id: UUID
    order_id: UUID | None
    actor: Actor
    code: str
    reason: str
    current_status: OrderStatus | None = None
    requested_status: OrderStatus | None = None


CommandResult = Annotated[CommandAccepted | CommandRejected, Field(discriminator="type")]
command_result_adapter: TypeAdapter[CommandAccepted | CommandRejected] = TypeAdapter(CommandResult)


# --- orders.events ---------------------------------------------------------------------


class OrderCreated(Envelope):
    type: Literal["OrderCreated"] = "OrderCreated"
    order_id: UUID
    status: OrderStatus
    version: int = Field(ge=1)
    customer: Customer
    actor: Actor


class OrderStatusChanged(Envelope):
    type: Literal["OrderStatusChanged"] = "OrderStatusChanged"
    order_id: UUID
    from_status: OrderStatus = Field(alias="from")
    to_status: OrderStatus = Field(alias="to")
    version: int = Field(ge=1)
    actor: Actor
    reason: str | None = None
    customer: Customer

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


OrderEvent = Annotated[OrderCreated | OrderStatusChanged, Field(discriminator="type")]
order_event_adapter: TypeAdapter[OrderCreated | OrderStatusChanged] = TypeAdapter(OrderEvent)
