"""Upstream commands from `orders.commands`: parse, apply once, let the outbox announce the
result. The offset is committed only after the handler returns, i.e. after the transaction."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts import ORDERS_COMMANDS, describe_invalid, order_command_adapter
from order import service
from order.adapters.broker import parse_with_text_headers, undecoded
from order.adapters.dead_letters import dead_letter
from order.adapters.unit_of_work import UnitOfWorkFactory, Unstorable
from order.config import Settings

log = logging.getLogger(__name__)


def register_command_handlers(
    broker: KafkaBroker, uow_factory: UnitOfWorkFactory, settings: Settings
) -> None:
    group = settings.commands_consumer_group

    @broker.subscriber(
        ORDERS_COMMANDS,
        group_id=group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Raw records in: every message reaches the handler, which parses or dead-letters it.
        parser=parse_with_text_headers,
        decoder=undecoded,
        description="Upstream commands, each `command_id` applied once and answered on "
        "`orders.command-results`; what cannot be taken goes to `orders.commands.dlq`.",
    )
    async def on_command(msg: KafkaMessage) -> None:
        try:
            command = order_command_adapter.validate_json(msg.body)
        except ValidationError as error:
            await dead_letter(broker, msg, describe_invalid(error), group)
            return
        try:
            await service.handle_command(uow_factory, command)
        except Unstorable as refused:
            await dead_letter(broker, msg, f"unstorable: {refused}", group)
        except Exception:
            # Not the message's fault (database down?): redeliver it after a pause.
            log.exception("command %s failed; will be redelivered", command.command_id)
            await asyncio.sleep(settings.command_retry_seconds)
            raise
