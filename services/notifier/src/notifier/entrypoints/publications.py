"""What the notifier publishes, declared on its broker so the AsyncAPI document built from it
(`make docs`) shows each topic with its contract. The outbox relay and dead-lettering send
with `broker.publish`; these publishers describe the topics and send nothing."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_EVENTS,
    DeadLetter,
    NotificationEvent,
    dlq_topic,
)


def declare_publications(broker: KafkaBroker) -> None:
    broker.publisher(
        NOTIFICATIONS_EVENTS,
        schema=NotificationEvent,
        description="Each communication's outcome (queued, sent, failed, dead, skipped) with "
        "its dedupe key, relayed from the outbox; keyed by order id.",
    )
    broker.publisher(
        dlq_topic(NOTIFICATIONS_EVENTS),
        schema=DeadLetter,
        description="Communications that went dead after their last attempt, for replay.",
    )
    broker.publisher(
        dlq_topic(ORDERS_EVENTS),
        schema=DeadLetter,
        description="Order events that could not be taken (not JSON, unknown type, invalid, "
        "unstorable), kept whole with the reason.",
    )
