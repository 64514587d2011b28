"""Which communications an order event asks for, and what their templates are given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts import Channel, Customer, OrderCreated, OrderStatus, OrderStatusChanged

OrderEvent = OrderCreated | OrderStatusChanged

CREATED_TEMPLATE = "order_created"


@dataclass(frozen=True)
class NotificationRules:
    """What notifies: status changes to `statuses`, order creation if `on_order_created`, each
    on every channel in `channels` the customer can be reached on."""

    statuses: frozenset[OrderStatus]
    on_order_created: bool
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class PlannedCommunication:
    channel: Channel
    template: str
    recipient: str


def template_for(event: OrderEvent) -> str:
    if isinstance(event, OrderCreated):
        return CREATED_TEMPLATE
    return f"order_{event.to_status.value}"


def _notifies(event: OrderEvent, rules: NotificationRules) -> bool:
    if isinstance(event, OrderCreated):
        return rules.on_order_created
    return event.to_status in rules.statuses


def _address(customer: Customer, channel: Channel) -> str | None:
    return customer.email if channel is Channel.EMAIL else customer.phone


def plan_communications(event: OrderEvent, rules: NotificationRules) -> list[PlannedCommunication]:
    if not _notifies(event, rules):
        return []
    template = template_for(event)
    planned = []
    for channel in rules.channels:
        recipient = _address(event.customer, channel)
        if recipient:
            planned.append(PlannedCommunication(channel, template, recipient))
    return planned


def template_context(event: OrderEvent) -> dict[str, Any]:
    """Everything a template may use; stored with the communication (JSON), so a send renders
    the same text however late it happens."""
    status = event.status if isinstance(event, OrderCreated) else event.to_status
    return {
        "order_id": str(event.order_id),
        "customer_name": event.customer.name,
        "status": status.value,
        "status_label": status.value.replace("_", " "),
        "reason": event.reason if isinstance(event, OrderStatusChanged) else None,
    }
