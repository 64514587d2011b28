"""Dead-lettering: a message this service cannot take goes, whole and with the reason, to
`<topic>.dlq`, so the consumer can carry on without losing it."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker

from contracts import DeadLetter, dlq_topic


def letter_for(record: ConsumerRecord[Any, Any], reason: str, consumer_group: str) -> DeadLetter:
    return DeadLetter.of_record(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=record.headers,
        reason=reason,
        consumer_group=consumer_group,
    )


async def dead_letter(
    broker: KafkaBroker, record: ConsumerRecord[Any, Any], reason: str, consumer_group: str
) -> None:
    letter = letter_for(record, reason, consumer_group)
    await broker.publish(
        letter.model_dump_json().encode(),
        dlq_topic(letter.source_topic),
        key=letter.record_key,
        headers={"content-type": "application/json"},
    )
