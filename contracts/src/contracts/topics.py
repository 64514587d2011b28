"""Kafka topic names. Every topic is keyed by order id so one order's messages stay in order."""

from typing import Final

ORDERS_COMMANDS: Final = "orders.commands"
ORDERS_COMMAND_RESULTS: Final = "orders.command-results"
ORDERS_EVENTS: Final = "orders.events"
NOTIFICATIONS_EVENTS: Final = "notifications.events"

ALL_TOPICS: Final = (ORDERS_COMMANDS, ORDERS_COMMAND_RESULTS, ORDERS_EVENTS, NOTIFICATIONS_EVENTS)


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of `topic`: whoever consumes `topic` writes its rejects here."""
    return f"{topic}.dlq"
