"""Every audited topic → one audit entry per message. The offset is committed only after the
handler returns, i.e. after the entry is committed to the chain."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import TypeAdapter, ValidationError

from audit import service
from audit.adapters.dead_letters import dead_letter
from audit.config import Settings
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_EVENTS,
    command_result_adapter,
    describe_invalid,
    notification_event_adapter,
    order_event_adapter,
)

log = logging.getLogger(__name__)

AUDITED_TOPICS: dict[str, TypeAdapter[Any]] = {
    ORDERS_EVENTS: order_event_adapter,
    ORDERS_COMMAND_RESULTS: command_result_adapter,
    NOTIFICATIONS_EVENTS: notification_event_adapter,
}


def register_audit_handlers(
    broker: KafkaBroker, uow_factory: service.UnitOfWorkFactory, settings: Settings
) -> None:
    for topic, adapter in AUDITED_TOPICS.items():
        _subscribe(broker, topic, adapter, uow_factory, settings)


def _subscribe(
    broker: KafkaBroker,
    topic: str,
    adapter: TypeAdapter[Any],
    uow_factory: service.UnitOfWorkFactory,
    settings: Settings,
) -> None:
    @broker.subscriber(
        topic,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_message(msg: KafkaMessage) -> None:
        try:
            message = adapter.validate_json(msg.body)
        except ValidationError as error:
            await dead_letter(broker, msg, describe_invalid(error), settings.consumer_group)
            return
        try:
            await service.record(uow_factory, [message])
        except Exception:
            log.exception("%s %s not audited; will be redelivered", topic, message.event_id)
            await asyncio.sleep(settings.retry_seconds)
            raise
