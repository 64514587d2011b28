"""Dead-lettering: a message this service cannot take goes, whole and with the reason, to
`<topic>.dlq`, so the consumer can carry on without losing it."""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
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
    broker: KafkaBroker, message: KafkaMessage, reason: str, consumer_group: str
) -> None:
    record = message.raw_message
    assert not isinstance(record, tuple), "dead-lettering is per message"
    payload = (record.value or b"").decode("utf-8", errors="replace")
    if len(payload) > MAX_KEPT_PAYLOAD:
        reason = f"{reason} (payload of {len(payload)} characters cut to {MAX_KEPT_PAYLOAD})"
        payload = payload[:MAX_KEPT_PAYLOAD]
    letter = DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode("utf-8", errors="replace") if record.key else None,
        payload=payload,
        headers={k: v.decode("utf-8", errors="replace") for k, v in record.headers},
        reason=reason,
        consumer_group=consumer_group,
    )
    await broker.publish(
        letter.model_dump_json().encode(),
        dlq_topic(record.topic),
        key=record.key,
        headers={"content-type": "application/json"},
    )
