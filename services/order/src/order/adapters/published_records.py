"""Reads the relay's own records back from Kafka: which outbox rows did a relay send and see
acknowledged, but stop (SIGKILL, lost database connection) before marking? Marking those
instead of sending them again keeps each event once on its topic."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

# The header each relayed record carries: the outbox row's event id.
EVENT_ID_HEADER = "event-id"

Position = tuple[str, int]  # topic, partition


@dataclass(frozen=True)
class ReadBack:
    event_ids: set[str]  # of the records found past the known positions
    ends: dict[Position, int]  # where each partition ended when read


class PublishedRecords:
    """One consumer, outside any group, started on first use and kept for the next."""

    def __init__(self, bootstrap_servers: str, timeout: float) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._timeout = timeout
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def read_past(
        self, topics: set[str], positions: dict[Position, int], since: datetime
    ) -> ReadBack:
        """Event ids of the records past `positions` on `topics`; a partition without a known
        position is read from its first record written at or after `since`."""
        consumer = await self._started()
        async with asyncio.timeout(self._timeout):
            partitions = await self._partitions(topics)
            ends = await consumer.end_offsets(partitions)
            starts = await self._starts(consumer, partitions, positions, since, ends)
            event_ids = await _event_ids_between(consumer, starts, ends)
        return ReadBack(event_ids, {(tp.topic, tp.partition): end for tp, end in ends.items()})

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    async def _partitions(self, topics: set[str]) -> list[TopicPartition]:
        # The admin client's answer, not the consumer's cached metadata, which knows only the
        # topics the consumer was assigned before.
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers)
            await admin.start()
            self._admin = admin
        described = await self._admin.describe_topics(sorted(topics))
        return [
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            for partition in topic["partitions"]
        ]

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                client_id="order-relay-read-back",
            )
            async with asyncio.timeout(self._timeout):
                await consumer.start()
            self._consumer = consumer
        return self._consumer

    @staticmethod
    async def _starts(
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        positions: dict[Position, int],
        since: datetime,
        ends: dict[TopicPartition, int],
    ) -> dict[TopicPartition, int]:
        unknown = [tp for tp in partitions if (tp.topic, tp.partition) not in positions]
        by_time = (
            await consumer.offsets_for_times(dict.fromkeys(unknown, int(since.timestamp() * 1000)))
            if unknown
            else {}
        )
        starts = {}
        for tp in partitions:
            known = positions.get((tp.topic, tp.partition))
            found = by_time.get(tp)
            start = known if known is not None else (found.offset if found else ends[tp])
            if start < ends[tp]:
                starts[tp] = start
        return starts


async def _event_ids_between(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> set[str]:
    event_ids: set[str] = set()
    consumer.assign(list(starts))
    for tp, start in starts.items():
        consumer.seek(tp, start)
    reading = set(starts)
    while reading:
        for tp, records in (await consumer.getmany(*reading, timeout_ms=500)).items():
            for record in records:
                if record.offset >= ends[tp]:
                    break
                for name, value in record.headers:
                    if name == EVENT_ID_HEADER:
                        event_ids.add(value.decode(errors="replace"))
            if records and records[-1].offset >= ends[tp] - 1:
                reading.discard(tp)
    consumer.assign([])
    return event_ids
