"""Relays committed outbox rows to Kafka until the broker acknowledges them.

- Woken by LISTEN/NOTIFY on commit, with a polling fallback for lost notifications. Once
  woken, it lingers (50 ms by default), so that the commits right behind share the batch.
- One relay publishes at a time: each batch runs under a transaction-scoped advisory lock,
  so replicas of the service never publish the same rows concurrently.
- Rows go out in `id` order, which for one order is the order of its changes. A batch carries
  at most one row per key (order): a later change is sent only once the earlier one is
  acknowledged, so no failure of the producer can put an order's events out of order.
- Every acknowledged row is marked published, also when others in its batch failed, so a retry
  re-sends only what Kafka did not take. After any failed send the producer is replaced: an
  idempotent aiokafka producer can be left with sequence numbers the broker refuses for good
  (aio-libs/aiokafka#1017), and a fresh producer id starts them anew.
- Published rows are deleted once older than the retention setting, a batch at a time between
  batches of publishing.
- A row is marked published only after its send is acknowledged. A relay that stops between
  the ack and the mark (SIGKILL, database gone) leaves records on Kafka with unmarked rows; the
  next batch after a start, a failure, or a row waiting suspiciously long first reads the
  topics back past the last known positions and marks the rows it finds there (records carry
  their event id in a header), so they are not sent twice. Consumers still deduplicate by
  event id, should a record land after its read-back.
- Each row is published in the trace of the change that wrote it (its stored `traceparent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from sqlalchemy import Text, Uuid, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from order.adapters.broker import BrokerConnection
from order.adapters.listening import asyncpg_dsn, listen_forever
from order.adapters.published_records import EVENT_ID_HEADER, PublishedRecords
from order.adapters.tables import OUTBOX_CHANNEL, outbox, relay_positions
from order.adapters.telemetry import attached
from pgstatements import (
    Backlog,
    OutboxStatements,
    Sql,
    compiled,
    transaction,
)

log = logging.getLogger(__name__)

# An arbitrary constant naming "the order outbox relay" among advisory locks.
RELAY_LOCK_KEY = 0x6F72646572_01

# The statements of every batch, compiled once: built per batch, they showed in py-spy
# profiles of the order process (the position upsert was compiled anew for every batch).
WAITING_ROWS = compiled(
    select(
        outbox.c.id,
        outbox.c.event_id,
        outbox.c.topic,
        outbox.c.key,
        outbox.c.payload,
        outbox.c.headers,
        func.extract("epoch", func.now() - outbox.c.created_at).label("waited_seconds"),
    )
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.id)
    .limit(bindparam("batch_size"))
)
PURGE_BATCH = 10_000  # rows a purge deletes at most, in one transaction
OUTBOX = OutboxStatements(outbox, RELAY_LOCK_KEY)
_position = insert(relay_positions).values(
    topic=bindparam("topic"), partition=bindparam("partition"), next_offset=bindparam("next_offset")
)
# Run once per topic partition of a batch (one executemany); a position only moves forward.
ADVANCE_POSITION = compiled(
    _position.on_conflict_do_update(
        index_elements=[relay_positions.c.topic, relay_positions.c.partition],
        set_={
            "next_offset": func.greatest(
                relay_positions.c.next_offset, _position.excluded.next_offset
            )
        },
    )
)

# A row waiting longer than this may have been sent by a relay that died before marking it.
STALE_SECONDS = 5.0
# Records are timestamped by the relay's clock, rows by the database's: a margin for the skew.
CLOCK_SKEW = timedelta(minutes=1)


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
        published: PublishedRecords,
        *,
        database_url: str,
        batch_size: int,
        poll_interval: float,
        retry_interval: float,
        linger: float = 0.0,
        retention: timedelta = timedelta(days=1),
        purge_interval: float = 60.0,
        purge_batch: int = PURGE_BATCH,
        on_acknowledged: Callable[[str, int], None] = lambda topic, count: None,
    ) -> None:
        self._engine = engine
        self._kafka = kafka
        self._published = published
        self._read_back_due = True  # what a relay before this one sent is unknown
        self._next_stale_read_back = 0.0
        self._dsn = asyncpg_dsn(database_url)
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._linger = linger
        self._retry_interval = retry_interval
        self._retention = retention
        self._purge_interval = purge_interval
        self._purge_batch = purge_batch
        self._next_purge = 0.0
        self._stopping = False
        self._wake = asyncio.Event()
        self._on_acknowledged = on_acknowledged

    async def run(self) -> None:
        """Publish forever; cancel the task to stop. Never raises for Kafka or database faults:
        rows simply wait in the outbox until both are back. Connects and closes its client."""
        # Woken by each commit's notification, and by every (re)connection of the listener
        # to catch up on what was committed while it did not listen.
        listener = asyncio.create_task(
            listen_forever(
                self._dsn,
                OUTBOX_CHANNEL,
                self._wake.set,
                listening=self._wake.set,
                retry_interval=self._retry_interval,
                name="order-outbox-listener",
            ),
            name="outbox-listener",
        )
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
                    log.warning("outbox relay: publishing failed; retrying", exc_info=True)
                    # Sends of the failed batch may be on Kafka with their marks rolled back.
                    self._read_back_due = True
                    await asyncio.sleep(self._retry_interval)
                    continue
                if relayed.failed:
                    self._read_back_due = True
                    await self._kafka.renew()
                    await asyncio.sleep(self._retry_interval)
                elif not relayed.more_waiting:
                    await self._wait_for_work()
        finally:
            for task in (listener, connecting):
                task.cancel()
            await asyncio.gather(listener, connecting, return_exceptions=True)
            await self._kafka.broker.stop()
            await self._published.close()

    async def stop(self, running: asyncio.Task[None], grace: float) -> None:
        """End `running` (this relay's `run`) after the batch in hand: its acknowledged rows are
        marked, so a restart does not send them again. Cancelled if that takes over `grace` s."""
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.shield(running)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    async def _wait_for_work(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # races with the wake-up, leaving the relay running after shutdown asked it to stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval):
                await self._wake.wait()
                if self._linger and not self._stopping:
                    await asyncio.sleep(self._linger)  # for the commits right behind this one
        self._wake.clear()

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
        """Publish up to one batch of unpublished rows, at most one per key, and mark what
        Kafka acknowledged."""
        async with transaction(self._engine) as sql:
            if not await sql.value(OUTBOX.try_relay_lock):
                return Relayed(0, 0)
            waiting = await self._waiting_rows(sql)
            if waiting and self._read_back_needed(waiting[0]):
                await self._mark_sent_by_an_earlier_relay(sql)
                waiting = await self._waiting_rows(sql)
            rows = first_per_key(waiting)
            if not rows:
                return Relayed(0, 0)
            results = await self._send(rows)
            acknowledged: list[int] = []
            topics: Counter[str] = Counter()
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning(
                        "outbox row %s not acknowledged (%r); will retry", row["id"], result
                    )
                    continue
                acknowledged.append(row["id"])
                topics[row["topic"]] += 1
            if acknowledged:
                await sql.execute(OUTBOX.mark_published, {"ids": acknowledged})
                await _advance_positions(sql, _ends_of(results))
        for topic, count in topics.items():
            self._on_acknowledged(topic, count)
        return Relayed(
            len(acknowledged),
            len(rows) - len(acknowledged),
            more_waiting=len(waiting) == self._batch_size or len(rows) < len(waiting),
        )

    async def _waiting_rows(self, sql: Sql) -> Sequence[Any]:
        return await sql.rows(WAITING_ROWS, {"batch_size": self._batch_size})

    def _read_back_needed(self, oldest: Any) -> bool:
        now = time.monotonic()
        if self._read_back_due:
            return True
        # Another replica's relay may have died mid-batch; looked at once per STALE_SECONDS.
        if oldest["waited_seconds"] > STALE_SECONDS and now >= self._next_stale_read_back:
            self._next_stale_read_back = now + STALE_SECONDS
            return True
        return False

    async def _mark_sent_by_an_earlier_relay(self, sql: Sql) -> None:
        """Mark the waiting rows whose records are already on Kafka past the known positions."""
        waiting = await sql.rows(
            select(outbox.c.event_id, outbox.c.topic, outbox.c.created_at)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self._batch_size)
        )
        topics = {row["topic"] for row in waiting}
        known = {
            (row["topic"], row["partition"]): row["next_offset"]
            for row in await sql.rows(
                select(relay_positions).where(
                    relay_positions.c.topic == any_(bindparam("topics", list(topics), ARRAY(Text)))
                )
            )
        }
        since = min(row["created_at"] for row in waiting) - CLOCK_SKEW
        found = await self._published.read_past(topics, known, since)
        sent = [row["event_id"] for row in waiting if str(row["event_id"]) in found.event_ids]
        if sent:
            log.warning("outbox: %d rows were on Kafka already; marked, not re-sent", len(sent))
            await sql.execute(
                update(outbox)
                .where(outbox.c.event_id == any_(bindparam("sent", sent, ARRAY(Uuid))))
                .values(published_at=func.now())
            )
        await _advance_positions(sql, found.ends)
        self._read_back_due = False

    async def _send(self, rows: Sequence[Any]) -> list[object]:
        """Each row's acknowledgement or the error that stopped it, in the rows' order. The
        whole batch is handed to the producer before any ack is awaited, so it can batch them."""
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
                            headers={
                                "content-type": "application/json",
                                **row["headers"],
                                EVENT_ID_HEADER: str(row["event_id"]),
                            },
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


def _ends_of(results: list[object]) -> dict[tuple[str, int], int]:
    """Per topic partition, the offset after the last acknowledged record."""
    ends: dict[tuple[str, int], int] = {}
    for result in results:
        if isinstance(result, RecordMetadata):
            position = (result.topic, result.partition)
            ends[position] = max(ends.get(position, 0), result.offset + 1)
    return ends


async def _advance_positions(sql: Sql, ends: dict[tuple[str, int], int]) -> None:
    if not ends:
        return
    rows = [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in ends.items()]
    await sql.execute_many(ADVANCE_POSITION, rows)


def settled(error: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def first_per_key(rows: Sequence[Any]) -> list[Any]:
    """The earliest row of each key, in id order: an order's next event waits until Kafka has
    acknowledged the one before it."""
    seen: set[str] = set()
    firsts = []
    for row in rows:
        if row["key"] not in seen:
            seen.add(row["key"])
            firsts.append(row)
    return firsts
