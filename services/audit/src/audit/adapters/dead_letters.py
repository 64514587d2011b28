"""Dead-lettering: a message this service cannot take goes, whole and with the reason, to
`<topic>.dlq`, so the consumer can carry on without losing it."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from contracts import DeadLetter, dlq_topic

# Kafka refuses records over its max size (1 MiB by default); an oversized poison message
# must still fit in its dead letter, so its payload is cut to this many characters.
MAX_KEPT_PAYLOAD = 256 * 1024


def describe_invalid(error: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or 'message'}: {e['msg']}"
        for e in error.errors()[:5]
    )
    return f"invalid message: {problems}"


async def dead_letter(
    broker: KafkaBroker, record: ConsumerRecord[Any, Any], reason: str, consumer_group: str
) -> None:
    value: bytes = record.value or b""
    key: bytes | None = record.key
    payload = value.decode("utf-8", errors="replace")
    if len(payload) > MAX_KEPT_PAYLOAD:
        reason = f"{reason} (payload of {len(payload)} characters cut to {MAX_KEPT_PAYLOAD})"
        payload = payload[:MAX_KEPT_PAYLOAD]
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=key.decode("utf-8", errors="replace") if key else None,
        payload=payload,
        headers={k: (v or b"").decode("utf-8", errors="replace") for k, v in record.headers},
        reason=reason,
        consumer_group=consumer_group,
    )
    await broker.publish(
        letter.model_dump_json().encode(),
        dlq_topic(record.topic),
        key=key,
        headers={"content-type": "application/json"},
    )
