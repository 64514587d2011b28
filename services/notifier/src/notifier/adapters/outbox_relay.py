"""Relays the notifier's outbox to `notifications.events` until Kafka acknowledges each row.

Rows are written in the same transaction as the communication change they announce, so an
outcome is never lost and never announced for a change that rolled back. One relay publishes
at a time (a transaction-scoped advisory lock), in `id` order. A key's next row is sent only
once Kafka acknowledged the one before, whatever the producer does: a batch goes out in waves,
the first row of each key, then the next of each key whose row was acknowledged, and so on, so
that the rows an order's channels write together (its email and its SMS) share one batch. Every
acknowledged row is marked, also when others in its batch failed; after a failed send the
producer is replaced, as aiokafka's idempotent producer can be left refusing a partition for
good (aio-libs/aiokafka#1017). A crash between the ack and the mark re-sends a row, which the
audit service deduplicates by event id. Published rows are deleted once older than the
retention. Each row is published in the trace it was written in. Woken by a commit, the relay
lingers a few milliseconds, so that the commits right behind share its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.adapters.broker import BrokerConnection
from notifier.adapters.tables import outbox
from notifier.adapters.telemetry import attached
from pgstatements import (
    Backlog,
    OutboxStatements,
    compiled,
    transaction,
)

log = logging.getLogger(__name__)

# An arbitrary constant naming "the notifier outbox relay" among advisory locks.
RELAY_LOCK_KEY = 0x6E6F7469666965_01

# The statements of every batch, compiled once.
WAITING_ROWS = compiled(
    select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload, outbox.c.headers)
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.id)
    .limit(bindparam("batch_size"))
)
PURGE_BATCH = 10_000  # rows a purge deletes at most, in one transaction
OUTBOX = OutboxStatements(outbox, RELAY_LOCK_KEY)


@dataclass(frozen=True)
class Relayed:
    """What one batch did."""

    acknowledged: int
    failed: int  # sends Kafka did not acknowledge; they stay in the outbox for the next batch
    # Rows the batch left waiting (it was full, or it held back a key's later rows): the next
    # batch starts at once instead of waiting to be woken.
    more_waiting: bool = False


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        kafka: BrokerConnection,
        *,
        batch_size: int,
        poll_interval: float,
        retry_interval: float,
        retention: timedelta,
        linger: float = 0.0,
        purge_interval: float = 60.0,
        purge_batch: int = PURGE_BATCH,
        on_acknowledged: Callable[[str, int], None] = lambda topic, count: None,
    ) -> None:
        self._engine = engine
        self._kafka = kafka
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._linger = linger
        self._retry_interval = retry_interval
        self._retention = retention
        self._purge_interval = purge_interval
        self._purge_batch = purge_batch
        self._next_purge = 0.0
        self._stopping = False
        self.wake = asyncio.Event()
        self._on_acknowledged = on_acknowledged

    async def run(self) -> None:
        """Publish forever; cancel the task to stop. Kafka or database faults never end it:
        rows wait in the outbox until both are back. Connects and closes its client."""
        connecting = asyncio.create_task(self._kafka.connect(), name="outbox-kafka-connect")
        try:
            while not self._stopping:
                await self._kafka.connected.wait()
                try:
                    relayed = await self.publish_batch()
                    await self._purge_when_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("notifier outbox: publishing failed; retrying", exc_info=True)
                    await asyncio.sleep(self._retry_interval)
                    continue
                if relayed.failed:
                    await self._kafka.renew()
                    await asyncio.sleep(self._retry_interval)
                elif not relayed.more_waiting:
                    await self._wait_for_work()
        finally:
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await self._kafka.broker.stop()

    async def stop(self, running: asyncio.Task[None], grace: float) -> None:
        """End `running` (this relay's `run`) after the batch in hand: its acknowledged rows are
        marked, so a restart does not send them again. Cancelled if that takes over `grace` s."""
        self._stopping = True
        self.wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.shield(running)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    async def _wait_for_work(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation racing
        # with the wake-up, and the relay would outlive shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await self.wake.wait()
                if self._linger and not self._stopping:
                    await asyncio.sleep(self._linger)  # for the commits right behind this one
        self.wake.clear()

    async def _purge_when_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            purged = await self.purge_published()
            # A full batch: more may be due, purged after the next batch of publishing.
            self._next_purge = now if purged == self._purge_batch else now + self._purge_interval

    async def purge_published(self) -> int:
        """Delete up to a purge batch of rows published longer ago than the retention."""
        return await OUTBOX.purge_published(self._engine, self._retention, self._purge_batch)

    async def backlog(self) -> Backlog:
        return await OUTBOX.backlog(self._engine)

    async def publish_batch(self) -> Relayed:
        """Publish up to one batch of unpublished rows in waves (the first row of each key,
        then the next of each key whose row was acknowledged, ...) and mark what Kafka
        acknowledged. After a wave with a failed send, the rest waits for the next batch, and
        a fresh producer."""
        async with transaction(self._engine) as sql:
            if not await sql.value(OUTBOX.try_relay_lock):
                return Relayed(0, 0)
            waiting = await sql.rows(WAITING_ROWS, {"batch_size": self._batch_size})
            if not waiting:
                return Relayed(0, 0)
            acknowledged, failed = await self._send_in_waves(waiting)
            if acknowledged:
                ids = [row["id"] for row in acknowledged]
                await sql.execute(OUTBOX.mark_published, {"ids": ids})
        for topic, count in Counter(row["topic"] for row in acknowledged).items():
            self._on_acknowledged(topic, count)
        return Relayed(
            len(acknowledged),
            failed,
            more_waiting=len(waiting) == self._batch_size
            or len(acknowledged) + failed < len(waiting),
        )

    async def _send_in_waves(self, rows: Sequence[Any]) -> tuple[list[Any], int]:
        """The rows Kafka acknowledged, and how many sends failed. A key's next row joins the
        next wave once its row before was acknowledged; after a wave with a failure, none."""
        later = rows_by_key(rows)
        wave = [queue.popleft() for queue in later.values()]
        acknowledged: list[Any] = []
        failed = 0
        while wave and not failed:
            following = []
            for row, result in zip(wave, await self._send(wave), strict=True):
                if isinstance(result, BaseException):
                    log.warning(
                        "outbox row %s not acknowledged (%r); will retry", row["id"], result
                    )
                    failed += 1
                    continue
                acknowledged.append(row)
                if later[row["key"]]:  # the key's next row may go now, not before
                    following.append(later[row["key"]].popleft())
            wave = following
        return acknowledged, failed

    async def _send(self, rows: Sequence[Any]) -> list[object]:
        """Each row's acknowledgement or the error that stopped it, in the rows' order. All
        the rows (a wave) are handed to the producer before any ack is awaited, so it can batch
        them."""
        pending: list[asyncio.Future[Any]] = []
        refused: BaseException | None = None
        for row in rows:
            try:
                with attached(row["headers"]):
                    pending.append(
                        await self._kafka.broker.publish(
                            json.dumps(row["payload"], separators=(",", ":")).encode(),
                            row["topic"],
                            key=row["key"].encode(),
                            headers={"content-type": "application/json"},
                            no_confirm=True,
                        )
                    )
            except MessageSizeTooLargeError as error:  # this row only; the others can go
                pending.append(settled(error))
            except Exception as error:  # the rows already handed over still count
                refused = error
                break
        results: list[object] = list(await asyncio.gather(*pending, return_exceptions=True))
        return results + [refused] * (len(rows) - len(pending))


def settled(error: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def rows_by_key(rows: Sequence[Any]) -> dict[str, deque[Any]]:
    """Each key's rows, in id order."""
    by_key: dict[str, deque[Any]] = {}
    for row in rows:
        by_key.setdefault(row["key"], deque()).append(row)
    return by_key
