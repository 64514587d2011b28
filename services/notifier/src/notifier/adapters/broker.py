"""Connects the Kafka broker client in the background, so the service starts, serves its read
API and keeps dispatching email while Kafka is down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from faststream.message import StreamMessage

log = logging.getLogger(__name__)

# Stopping flushes what the producer still holds; a publisher renews only after every send of
# its batch was settled, so this is a bound for the unexpected, not a wait that happens.
STOP_TIMEOUT_SECONDS = 10.0


class BrokerConnection:
    def __init__(self, broker: KafkaBroker, retry_interval: float) -> None:
        self.broker = broker
        self.connected = asyncio.Event()
        self._retry_interval = retry_interval

    async def connect(self) -> None:
        """Start the broker's producer and subscribers, retrying until Kafka answers. Once
        started, the client reconnects by itself after broker outages."""
        while True:
            try:
                await self.broker.start()
            except Exception as error:
                log.warning("kafka unreachable (%s); retrying", error)
                with contextlib.suppress(Exception):
                    await self.broker.stop()  # release the half-started clients
                await asyncio.sleep(self._retry_interval)
                continue
            self.connected.set()
            return

    async def renew(self) -> None:
        """Replace the clients with fresh ones. For a publisher whose send failed: aiokafka's
        idempotent producer can keep sequence numbers the broker refuses from then on
        (aio-libs/aiokafka#1017); a new producer gets a new producer id and starts them anew."""
        self.connected.clear()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await self.broker.stop()
        except Exception:
            log.warning("kafka client did not stop cleanly; replacing it anyway", exc_info=True)
        await self.connect()


Record: TypeAlias = "ConsumerRecord[Any, Any]"
Records: TypeAlias = tuple[Record, ...]


# A consumer's fetch is answered early once it holds this much; otherwise when its wait ends.
FETCH_MIN_BYTES = 64 * 1024


async def parse_with_text_headers(
    records: Records, parse: Callable[[Records], Awaitable[StreamMessage[Records]]]
) -> StreamMessage[Records]:
    """faststream's batch parser decodes every header value as strict UTF-8 and, when that
    fails, drops the whole batch unseen (neither handled nor dead-lettered). Header values
    are made valid UTF-8 first; the handler reads only the trace context from them."""
    return await parse(
        tuple(
            dataclasses.replace(
                record,
                headers=[
                    (name, (value or b"").decode("utf-8", errors="replace").encode())
                    for name, value in record.headers
                ],
            )
            for record in records
        )
    )


async def undecoded(message: StreamMessage[Records]) -> Any:
    """The bodies as they came. faststream's own decoder parses JSON when the content-type
    header says so and raises on a body that is not, before the handler could dead-letter
    it; the handler parses the raw bytes itself. async: faststream runs a plain `def`
    decoder in a worker thread, a thread hop per message."""
    return message.body
