"""Messages about orders: upstream commands, their results, and the order service's events."""

from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, TypeAdapter

from contracts.base import Actor, Envelope, Message, utc_now
from contracts.statuses import OrderStatus


class Customer(BaseModel):
    """How the customer is reached; the notifier addresses emails and SMS from this."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    email: EmailStr | None = None
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
