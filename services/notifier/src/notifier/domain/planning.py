"""Which communications an order event asks for, and what their templates are given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from contracts import Channel, Customer, OrderCreated, OrderStatus, OrderStatusChanged

OrderEvent = OrderCreated | OrderStatusChanged

CREATED_TEMPLATE = "order_created"


@dataclass(frozen=True)
class NotificationRules:
    """What notifies: status changes to `statuses` (or, for a channel in `channel_statuses`,
    to the statuses given there), order creation if `on_order_created`, each on every channel
    in `channels` the customer can be reached on."""

    statuses: frozenset[OrderStatus]
    on_order_created: bool
    channels: tuple[Channel, ...]
    channel_statuses: Mapping[Channel, frozenset[OrderStatus]] = field(default_factory=dict)

    def statuses_on(self, channel: Channel) -> frozenset[OrderStatus]:
        return self.channel_statuses.get(channel, self.statuses)


@dataclass(frozen=True)
class PlannedCommunication:
    channel: Channel
    template: str
    recipient: str


def template_for(event: OrderEvent) -> str:
    if isinstance(event, OrderCreated):
        return CREATED_TEMPLATE
    return f"order_{event.to_status.value}"


def _notifies(event: OrderEvent, rules: NotificationRules, channel: Channel) -> bool:
    if isinstance(event, OrderCreated):
        return rules.on_order_created
    return event.to_status in rules.statuses_on(channel)


def _address(customer: Customer, channel: Channel) -> str | None:
    return customer.email if channel is Channel.EMAIL else customer.phone


def plan_communications(event: OrderEvent, rules: NotificationRules) -> list[PlannedCommunication]:
    template = template_for(event)
    planned = []
    for channel in rules.channels:
        recipient = _address(event.customer, channel)
        if recipient and _notifies(event, rules, channel):
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
