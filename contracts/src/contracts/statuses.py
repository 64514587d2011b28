"""The order status lifecycle: one transition table drives every guard in every service."""

from enum import StrEnum
from typing import Final


class OrderStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    PREPARING = "preparing"
    READY = "ready"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    CANCELLED = "cancelled"


TRANSITIONS: Final[dict[OrderStatus, frozenset[OrderStatus]]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.CONFIRMED, OrderStatus.CANCELLED}),
    OrderStatus.CONFIRMED: frozenset({OrderStatus.PREPARING, OrderStatus.CANCELLED}),
    OrderStatus.PREPARING: frozenset({OrderStatus.READY, OrderStatus.CANCELLED}),
    OrderStatus.READY: frozenset({OrderStatus.OUT_FOR_DELIVERY, OrderStatus.CANCELLED}),
    OrderStatus.OUT_FOR_DELIVERY: frozenset({OrderStatus.DELIVERED}),
    OrderStatus.DELIVERED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}

INITIAL_STATUS: Final = OrderStatus.PENDING


def allowed_next(status: OrderStatus) -> list[OrderStatus]:
    """The statuses `status` may move to, in lifecycle order (stable for error bodies and UIs)."""
    order = list(OrderStatus)
    return sorted(TRANSITIONS[status], key=order.index)


def is_allowed(current: OrderStatus, target: OrderStatus) -> bool:
    return target in TRANSITIONS[current]


def is_terminal(status: OrderStatus) -> bool:
    return not TRANSITIONS[status]
