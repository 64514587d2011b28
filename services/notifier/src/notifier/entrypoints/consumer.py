"""`orders.events` → recorded communications, a consumed batch at a time. The offsets are
committed only after the handler returns, i.e. after the batch's communications are committed;
on an error the batch is redelivered, which records nothing twice (the dedupe keys are taken).
The dispatch worker sends them: those recorded already claimed at once, the rest once
claimed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from contracts import ORDERS_EVENTS, describe_invalid, order_event_adapter
from notifier import service
from notifier.adapters.broker import FETCH_MIN_BYTES, Records, parse_with_text_headers, undecoded
from notifier.adapters.telemetry import record_key, span_per_record, trace_context_of
from notifier.domain.planning import NotificationRules, OrderEvent
from notifier.entrypoints.worker import DispatchWorker
from servicekit.dead_letters import dead_letter

log = logging.getLogger(__name__)

Parsed = list[tuple[ConsumerRecord[Any, Any], OrderEvent]]
Rejected = list[tuple[ConsumerRecord[Any, Any], str]]


def parse(records: Records) -> tuple[Parsed, Rejected]:
    """Each record as an order event, or the reason it is not one."""
    parsed: Parsed = []
    rejected: Rejected = []
    for record in records:
        try:
            parsed.append((record, order_event_adapter.validate_json(record.value or b"")))
        except ValidationError as error:
            rejected.append((record, describe_invalid(error)))
    return parsed, rejected


def register_event_handlers(
    broker: KafkaBroker,
    uow_factory: service.UnitOfWorkFactory,
    rules: NotificationRules,
    *,
    consumer_group: str,
    batch_size: int,
    wait_ms: int,
    retry_seconds: float,
    worker: DispatchWorker,
) -> None:
    """Subscribe to orders.events. What a batch records, `worker` sends: it leaves the batch
    room to claim them as they are recorded."""

    async def take(records: Records) -> None:
        with span_per_record(records) as spans:
            parsed, rejects = parse(records)
            if parsed:
                events = [
                    (event, trace_context_of(spans.get(record_key(record))))
                    for record, event in parsed
                ]
                claim = worker.claim_for_recording()
                recorded = await service.record_communications(uow_factory, events, rules, claim)
                rejects += [
                    (parsed[position][0], f"unstorable: {why}")
                    for position, why in recorded.refused.items()
                ]
                if claim is not None:
                    worker.hand_over(recorded.claimed, claim)
                if recorded.queued:
                    worker.wake()
            # After the commit: a failure here redelivers the batch, which records nothing new.
            for record, reason in rejects:
                if (span := spans.get(record_key(record))) is not None:
                    span.set_status(StatusCode.ERROR, f"dead-lettered: {reason}")
                await dead_letter(broker, record, reason, consumer_group)

    @broker.subscriber(
        ORDERS_EVENTS,
        group_id=consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # A batch per transaction and per offset commit: committing each message's offset on
        # its own capped the consumer at about a hundred messages a second.
        batch=True,
        max_records=batch_size,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=wait_ms,
        # Raw records in: every message reaches the handler, which parses or dead-letters it.
        parser=parse_with_text_headers,
        decoder=undecoded,
        description="Order events, each recorded as the communications it calls for (once per "
        "event, channel, template and recipient); what cannot be taken goes to "
        "`orders.events.dlq`.",
    )
    async def on_order_events(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        try:
            await take(records)
        except Exception:
            # Not the messages' fault (database or DLQ unreachable): redeliver after a pause.
            log.exception("%d messages not taken; they will be redelivered", len(records))
            await asyncio.sleep(retry_seconds)
            raise
