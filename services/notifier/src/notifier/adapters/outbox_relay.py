"""Relays the notifier's outbox to `notifications.events` until Kafka acknowledges each row.

Rows are written in the same transaction as the communication change they announce, so an
outcome is never lost and never announced for a change that rolled back. One relay publishes
at a time (a transaction-scoped advisory lock), in `id` order; a crash between the ack and the
mark re-sends a row, which the audit service deduplicates by event id. Published rows are
deleted once older than the retention. Each row is published in the trace it was written in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from faststream.kafka import KafkaBroker
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.adapters.tables import outbox
from notifier.adapters.telemetry import attached

log = logging.getLogger(__name__)

# An arbitrary constant naming "the notifier outbox relay" among advisory locks.
RELAY_LOCK_KEY = 0x6E6F7469666965_01


@dataclass(frozen=True)
class Backlog:
    rows: int  # not yet acknowledged by Kafka
    oldest_age_seconds: float  # 0 when there are none


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        broker: KafkaBroker,
        connected: asyncio.Event,
        *,
        batch_size: int,
        poll_interval: float,
        retry_interval: float,
        retention: timedelta,
        purge_interval: float = 60.0,
        on_acknowledged: Callable[[str, int], None] = lambda topic, count: None,
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._connected = connected
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._retry_interval = retry_interval
        self._retention = retention
        self._purge_interval = purge_interval
        self._next_purge = 0.0
        self.wake = asyncio.Event()
        self._on_acknowledged = on_acknowledged

    async def run(self) -> None:
        """Publish forever; cancel the task to stop. Kafka or database faults never end it:
        rows wait in the outbox until both are back."""
        while True:
            await self._connected.wait()
            try:
                published = await self.publish_batch()
                await self._purge_when_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("notifier outbox: publishing failed; retrying", exc_info=True)
                await asyncio.sleep(self._retry_interval)
                continue
            if published < self._batch_size:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # racing with the wake-up, and the relay would outlive shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await self.wake.wait()
                self.wake.clear()

    async def _purge_when_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_interval
            async with self._engine.begin() as connection:
                await connection.execute(
                    delete(outbox).where(outbox.c.published_at < func.now() - self._retention)
                )

    async def backlog(self) -> Backlog:
        """How many rows wait for Kafka, and for how long the oldest has (the partial index on
        unpublished rows keeps this cheap while the backlog is small)."""
        waiting = outbox.c.published_at.is_(None)
        age = func.extract("epoch", func.now() - func.min(outbox.c.created_at))
        query = select(func.count(), age).where(waiting)
        async with self._engine.connect() as connection:
            rows, oldest = (await connection.execute(query)).one()
        return Backlog(int(rows), float(oldest or 0.0))

    async def publish_batch(self) -> int:
        """Publish up to one batch of unpublished rows; return how many Kafka acknowledged."""
        async with self._engine.begin() as connection:
            locked = await connection.scalar(select(func.pg_try_advisory_xact_lock(RELAY_LOCK_KEY)))
            if not locked:
                return 0
            rows = (
                await connection.execute(
                    select(
                        outbox.c.id,
                        outbox.c.topic,
                        outbox.c.key,
                        outbox.c.payload,
                        outbox.c.headers,
                    )
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(self._batch_size)
                )
            ).all()
            if not rows:
                return 0
            # Send the whole batch before awaiting any ack, so the producer can batch them.
            pending = []
            for row in rows:
                with attached(row.headers):
                    pending.append(
                        await self._broker.publish(
                            json.dumps(row.payload, separators=(",", ":")).encode(),
                            row.topic,
                            key=row.key.encode(),
                            headers={"content-type": "application/json"},
                            no_confirm=True,
                        )
                    )
            results = await asyncio.gather(*pending, return_exceptions=True)
            acknowledged: list[int] = []
            topics: Counter[str] = Counter()
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("outbox row %s not acknowledged (%r); will retry", row.id, result)
                    break
                acknowledged.append(row.id)
                topics[row.topic] += 1
            if acknowledged:
                await connection.execute(
                    update(outbox)
                    .where(outbox.c.id.in_(acknowledged))
                    .values(published_at=func.now())
                )
        for topic, count in topics.items():
            self._on_acknowledged(topic, count)
        return len(acknowledged)
