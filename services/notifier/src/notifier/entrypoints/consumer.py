"""`orders.events` → recorded communications. The offset is committed only after the handler
returns, i.e. after the communications are committed; sending happens elsewhere, later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import ValidationError

from contracts import ORDERS_EVENTS, describe_invalid, order_event_adapter
from notifier import service
from notifier.adapters.broker import parse_with_text_headers, undecoded
from notifier.adapters.dead_letters import dead_letter
from notifier.adapters.unit_of_work import Unstorable
from notifier.domain.planning import NotificationRules

log = logging.getLogger(__name__)


def register_event_handlers(
    broker: KafkaBroker,
    uow_factory: service.UnitOfWorkFactory,
    rules: NotificationRules,
    *,
    consumer_group: str,
    retry_seconds: float,
    on_queued: Callable[[], None],
) -> None:
    """Subscribe to orders.events. `on_queued` runs when an event queued a communication."""

    async def take(msg: KafkaMessage) -> None:
        try:
            event = order_event_adapter.validate_json(msg.body)
        except ValidationError as error:
            await dead_letter(broker, msg, describe_invalid(error), consumer_group)
            return
        try:
            queued = await service.record_communications(uow_factory, event, rules)
        except Unstorable as refused:
            await dead_letter(broker, msg, f"unstorable: {refused}", consumer_group)
            return
        if queued:
            on_queued()

    @broker.subscriber(
        ORDERS_EVENTS,
        group_id=consumer_group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        # Raw records in: every message reaches the handler, which parses or dead-letters it.
        parser=parse_with_text_headers,
        decoder=undecoded,
        description="Order events, each recorded as the communications it calls for (once per "
        "event, channel, template and recipient); what cannot be taken goes to "
        "`orders.events.dlq`.",
    )
    async def on_order_event(msg: KafkaMessage) -> None:
        try:
            await take(msg)
        except Exception:
            # Not the message's fault (database or DLQ unreachable): redeliver after a pause.
            log.exception("message %s not taken; it will be redelivered", msg.message_id)
            await asyncio.sleep(retry_seconds)
            raise
