"""Contracts of the order backbone: every Kafka message, the status lifecycle, topic names.

Services import from here and never redefine a message.
"""

from contracts.base import Actor, Envelope, Message
from contracts.dlq import DeadLetter, describe_invalid
from contracts.notifications import (
    Channel,
    CommunicationDead,
    CommunicationEvent,
    CommunicationFailed,
    CommunicationQueued,
    CommunicationSent,
    CommunicationSkipped,
    NotificationEvent,
    notification_event_adapter,
)
from contracts.orders import (
    ChangeOrderStatus,
    CommandAccepted,
    CommandRejected,
    CommandResult,
    CreateOrder,
    Customer,
    OrderCommand,
    OrderCreated,
    OrderEvent,
    OrderStatusChanged,
    command_result_adapter,
    order_command_adapter,
    order_event_adapter,
)
from contracts.statuses import (
    INITIAL_STATUS,
    TRANSITIONS,
    OrderStatus,
    allowed_next,
    is_allowed,
    is_terminal,
)
from contracts.topics import (
    ALL_TOPICS,
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    dlq_topic,
)

__all__ = [
    "ALL_TOPICS",
    "INITIAL_STATUS",
    "NOTIFICATIONS_EVENTS",
    "ORDERS_COMMANDS",
    "ORDERS_COMMAND_RESULTS",
    "ORDERS_EVENTS",
    "TRANSITIONS",
    "Actor",
    "ChangeOrderStatus",
    "Channel",
    "CommandAccepted",
    "CommandRejected",
    "CommandResult",
    "CommunicationDead",
    "CommunicationEvent",
    "CommunicationFailed",
    "CommunicationQueued",
    "CommunicationSent",
    "CommunicationSkipped",
    "CreateOrder",
    "Customer",
    "DeadLetter",
    "Envelope",
    "Message",
    "NotificationEvent",
    "OrderCommand",
    "OrderCreated",
    "OrderEvent",
    "OrderStatus",
    "OrderStatusChanged",
    "allowed_next",
    "command_result_adapter",
    "describe_invalid",
    "dlq_topic",
    "is_allowed",
    "is_terminal",
    "notification_event_adapter",
    "order_command_adapter",
    "order_event_adapter",
]
