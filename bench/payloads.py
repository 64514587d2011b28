"""The messages the benchmark sends, built from the contracts so they are the ones the
services exchange."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

from contracts import (
    Actor,
    ChangeOrderStatus,
    CreateOrder,
    Customer,
    OrderStatus,
    OrderStatusChanged,
)

# The walk every benchmark order takes; every step notifies the customer by email.
LIFECYCLE = (
    OrderStatus.CONFIRMED,
    OrderStatus.PREPARING,
    OrderStatus.READY,
    OrderStatus.OUT_FOR_DELIVERY,
    OrderStatus.DELIVERED,
)
BENCH_ACTOR = Actor(id="bench", role="system")
CUSTOMER = Customer(name="Bench Customer", email="bench@example.com", phone="+44 20 7946 0000")


def version_of(target: OrderStatus) -> int:
    """The version an order reaches with `target` on its walk (created at version 1)."""
    return LIFECYCLE.index(target) + 2


def status_of(version: int) -> OrderStatus:
    return LIFECYCLE[version - 2]


def previous_status(version: int) -> OrderStatus:
    return OrderStatus.PENDING if version == 2 else LIFECYCLE[version - 3]


def status_changed(order_id: UUID, version: int, customer: Customer = CUSTOMER) -> bytes:
    """An `orders.events` message as the order service's relay publishes it."""
    event = OrderStatusChanged(
        order_id=order_id,
        from_status=previous_status(version),
        to_status=status_of(version),
        version=version,
        actor=BENCH_ACTOR,
        customer=customer,
        occurred_at=datetime.now(UTC),
    )
    return event.model_dump_json(by_alias=True).encode()


def create_command(order_id: UUID) -> bytes:
    command = CreateOrder(
        command_id=uuid4(), order_id=order_id, customer=CUSTOMER, actor=BENCH_ACTOR
    )
    return command.model_dump_json().encode()


def change_command(order_id: UUID, version: int) -> bytes:
    command = ChangeOrderStatus(
        command_id=uuid4(), order_id=order_id, status=status_of(version), actor=BENCH_ACTOR
    )
    return command.model_dump_json().encode()
