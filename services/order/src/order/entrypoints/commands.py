"""Upstream commands from `orders.commands`, a consumed batch at a time: parse, apply each once
(all in one transaction), let the outbox announce the results. The offsets are committed only
after the handler returns, i.e. after the transaction; on an error the batch is redelivered,
which applies nothing twice (each `command_id` is claimed)."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import propagate, trace
from pydantic import ValidationError

from contracts import ORDERS_COMMANDS, OrderCommand, describe_invalid, order_command_adapter
from order import service
from order.adapters.broker import (
    FETCH_MIN_BYTES,
    Record,
    Records,
    parse_with_text_headers,
    undecoded,
)
from order.adapters.telemetry import current_trace_context
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.config import Settings
from servicekit.dead_letters import dead_letter

log = logging.getLogger(__name__)


def trace_context_of(record: Record) -> dict[str, str]:
    """The trace a command continues: the one its record carries, else the batch's."""
    carried = {name: (value or b"").decode() for name, value in record.headers}
    if trace.get_current_span(propagate.extract(carried)).get_span_context().is_valid:
        return carried
    return current_trace_context()


def parse(records: Records) -> tuple[list[tuple[Record, OrderCommand]], list[tuple[Record, str]]]:
    """Each record as a command, or the reason it is not one."""
    parsed: list[tuple[Record, OrderCommand]] = []
    rejected: list[tuple[Record, str]] = []
    for record in records:
        try:
            parsed.append((record, order_command_adapter.validate_json(record.value or b"")))
        except ValidationError as error:
            rejected.append((record, describe_invalid(error)))
    return parsed, rejected


def register_command_handlers(
    broker: KafkaBroker, uow_factory: UnitOfWorkFactory, settings: Settings
) -> None:
    group = settings.commands_consumer_group

    @broker.subscriber(
        ORDERS_COMMANDS,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # A batch per transaction and per offset commit: one of each per command capped the
        # consumer at about 25 commands a second.
        batch=True,
        max_records=settings.commands_batch_size,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=settings.commands_wait_ms,
        # Raw records in: every message reaches the handler, which parses or dead-letters it.
        parser=parse_with_text_headers,
        decoder=undecoded,
        description="Upstream commands, each `command_id` applied once and answered on "
        "`orders.command-results`; what cannot be taken goes to `orders.commands.dlq`.",
    )
    async def on_commands(msg: KafkaMessage) -> None:
        raw = msg.raw_message
        records = raw if isinstance(raw, tuple) else (raw,)
        parsed, rejects = parse(records)
        try:
            refused = await service.handle_commands(
                uow_factory, [(command, trace_context_of(record)) for record, command in parsed]
            )
        except Exception:
            # Not the messages' fault (database down?): redeliver them after a pause.
            log.exception("%d commands failed; they will be redelivered", len(parsed))
            await asyncio.sleep(settings.command_retry_seconds)
            raise
        rejects += [(parsed[at][0], f"unstorable: {why}") for at, why in refused.items()]
        # After the commit: a failure here redelivers the batch, which applies nothing again.
        for record, reason in rejects:
            await dead_letter(broker, record, reason, group)
