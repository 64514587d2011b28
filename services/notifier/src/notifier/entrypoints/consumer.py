"""`orders.events` → recorded communications. The offset is committed only after the handler
returns, i.e. after the communications are committed; sending happens elsewhere, later."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts import ORDERS_EVENTS, describe_invalid, order_event_adapter
from notifier import service
from notifier.adapters.dead_letters import dead_letter
from notifier.config import Settings

log = logging.getLogger(__name__)


def register_event_handlers(
    broker: KafkaBroker,
    uow_factory: service.UnitOfWorkFactory,
    settings: Settings,
    recorded: asyncio.Event,
) -> None:
    email_statuses = frozenset(settings.email_statuses)

    @broker.subscriber(
        ORDERS_EVENTS,
        group_id=settings.consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_order_event(msg: KafkaMessage) -> None:
        try:
            event = order_event_adapter.validate_json(msg.body)
        except ValidationError as error:
            await dead_letter(broker, msg, describe_invalid(error), settings.consumer_group)
            return
        try:
            if await service.record_communications(uow_factory, event, email_statuses):
                recorded.set()  # wake the dispatcher instead of waiting for its next poll
        except Exception:
            log.exception("event %s not recorded; will be redelivered", event.event_id)
            await asyncio.sleep(settings.retry_seconds)
            raise
