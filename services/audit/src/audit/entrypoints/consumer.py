"""Every audited topic → one audit entry per message, a consumed batch at a time.

The offsets are committed only after the handler returns, i.e. after the batch's entries are
committed to the chain; on an error the batch is redelivered, which records nothing twice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry.trace import StatusCode
from pydantic import TypeAdapter, ValidationError

from audit import service
from audit.adapters.broker import FETCH_MIN_BYTES, Records, parse_with_text_headers, undecoded
from audit.adapters.telemetry import record_key, span_per_record
from audit.config import Settings
from audit.domain.entries import AuditedMessage
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_EVENTS,
    command_result_adapter,
    describe_invalid,
    notification_event_adapter,
    order_event_adapter,
)
from servicekit.dead_letters import dead_letter

log = logging.getLogger(__name__)

AUDITED_TOPICS: dict[str, TypeAdapter[Any]] = {
    ORDERS_EVENTS: order_event_adapter,
    ORDERS_COMMAND_RESULTS: command_result_adapter,
    NOTIFICATIONS_EVENTS: notification_event_adapter,
}


Parsed = list[tuple[ConsumerRecord[Any, Any], AuditedMessage]]
Rejected = list[tuple[ConsumerRecord[Any, Any], str]]


def _parse(records: Records) -> tuple[Parsed, Rejected]:
    """Each record as its topic's contract, or the reason it is not one."""
    parsed: Parsed = []
    rejected: Rejected = []
    for record in records:
        try:
            parsed.append((record, AUDITED_TOPICS[record.topic].validate_json(record.value or b"")))
        except ValidationError as error:
            rejected.append((record, describe_invalid(error)))
    return parsed, rejected


def register_audit_handlers(
    broker: KafkaBroker,
    uow_factory: service.UnitOfWorkFactory,
    settings: Settings,
    on_recorded: Callable[[int], None] = lambda added: None,
) -> None:
    """Subscribe to the audited topics. `on_recorded` is told how many entries each batch
    appended to the chain (after the commit)."""
    group = settings.consumer_group

    @broker.subscriber(
        *AUDITED_TOPICS,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        batch=True,
        max_records=settings.batch_size,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=settings.batch_wait_ms,
        parser=parse_with_text_headers,
        decoder=undecoded,
        description="One audit entry per message, appended to the hash chain once per event "
        "id; what cannot be audited goes to the topic's `.dlq`.",
    )
    async def on_batch(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        with span_per_record(records) as spans:
            parsed, rejects = _parse(records)
            if parsed:
                try:
                    recorded = await service.record(uow_factory, [m for _, m in parsed])
                except Exception:
                    # Not the messages' fault (database down?): redeliver them after a pause.
                    log.exception("%d messages not audited; will be redelivered", len(parsed))
                    await asyncio.sleep(settings.retry_seconds)
                    raise
                on_recorded(recorded.added)
                rejects += [
                    (parsed[position][0], f"cannot be stored: {why}")
                    for position, why in recorded.refused.items()
                ]
            # After the commit: a failure here redelivers the batch, whose entries are skipped.
            for record, reason in rejects:
                if (span := spans.get(record_key(record))) is not None:
                    span.set_status(StatusCode.ERROR, f"dead-lettered: {reason}")
                await dead_letter(broker, record, reason, group)
