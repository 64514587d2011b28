"""What the order service publishes, declared on its broker so the AsyncAPI document built
from it (`make docs`) shows each topic with its contract. The outbox relay and dead-lettering
send with `broker.publish`; these publishers describe the topics and send nothing."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from contracts import (
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    CommandResult,
    DeadLetter,
    OrderEvent,
    dlq_topic,
)


def declare_publications(broker: KafkaBroker) -> None:
    broker.publisher(
        ORDERS_EVENTS,
        schema=OrderEvent,
        description="Every order creation and status change, relayed from the outbox; "
        "keyed by order id.",
    )
    broker.publisher(
        ORDERS_COMMAND_RESULTS,
        schema=CommandResult,
        description="One result per `command_id` from `orders.commands`: accepted, or "
        "rejected with a code and reason; relayed from the outbox.",
    )
    broker.publisher(
        dlq_topic(ORDERS_COMMANDS),
        schema=DeadLetter,
        description="Commands that could not be taken (not JSON, unknown type, invalid, "
        "unstorable), kept whole with the reason.",
    )
