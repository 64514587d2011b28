"""HTTP request and response bodies of the order API (not Kafka contracts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from contracts import Customer, OrderStatus
from order.domain.auth import Role
from order.domain.model import Order


class CreateOrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: UUID | None = Field(default=None, description="Client-chosen order id; generated if absent")
    customer: Customer


class ChangeStatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # A plain string so an unknown status gets our own 422 body listing the allowed values.
    status: str = Field(examples=[s.value for s in OrderStatus])
    reason: str | None = Field(default=None, max_length=1000)


class OrderResponse(BaseModel):
    id: UUID
    status: OrderStatus
    version: int
    customer: Customer
    allowed_next: list[OrderStatus]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, order: Order) -> OrderResponse:
        return cls(
            id=order.id,
            status=order.status,
            version=order.version,
            customer=Customer(
                name=order.customer.name, email=order.customer.email, phone=order.customer.phone
            ),
            allowed_next=order.allowed_next,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


class OrderPage(BaseModel):
    items: list[OrderResponse]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class HistoryEntry(BaseModel):
    event_id: UUID
    from_status: OrderStatus | None = Field(serialization_alias="from")
    to_status: OrderStatus = Field(serialization_alias="to")
    version: int
    actor: str
    reason: str | None
    occurred_at: datetime


class HistoryResponse(BaseModel):
    order_id: UUID
    items: list[HistoryEntry]


class WhoAmI(BaseModel):
    id: str = Field(description="The token's holder: the `actor` of what it causes")
    role: Role


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable error code")
    message: str = Field(description="What went wrong, in a sentence")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """The one shape of every error answer."""

    error: ErrorDetail
