"""Connects the Kafka broker client in the background, so the service starts and serves its
read API and chain verification while Kafka is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream.kafka import KafkaBroker

log = logging.getLogger(__name__)


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
