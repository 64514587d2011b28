"""How far a consumer group is behind: per partition, the end offset minus the group's committed
offset (or minus the first offset, where the group has committed nothing yet and so would
start from the beginning)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

# Offsets of a partition that does not exist are waited for forever; this bounds one reading.
READ_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    lag: int


def lag_of(
    ends: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
    beginnings: Mapping[TopicPartition, int],
) -> list[PartitionLag]:
    """Per partition of `ends`; a committed offset below 0 means none was committed."""
    lags = []
    for tp, end in sorted(ends.items()):
        position = committed.get(tp, -1)
        if position < 0:
            position = beginnings.get(tp, 0)
        lags.append(PartitionLag(tp.topic, tp.partition, max(end - position, 0)))
    return lags


class ConsumerLagReader:
    """Reads the lag of one group on some topics with clients of its own (an admin client for
    the group's offsets, a group-less consumer for the partitions' offsets), opened on first
    use and reopened after a failure."""

    def __init__(self, bootstrap_servers: str, group: str, topics: Sequence[str]) -> None:
        self.group = group
        self._bootstrap_servers = bootstrap_servers
        self._topics = list(topics)
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self) -> list[PartitionLag]:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                return await self._read()
        except BaseException:
            await self.close()
            raise

    async def _read(self) -> list[PartitionLag]:
        if self._admin is None or self._consumer is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap_servers)
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers, group_id=None, enable_auto_commit=False
            )
            await self._admin.start()
            await self._consumer.start()
        partitions = [
            TopicPartition(topic["topic"], p["partition"])
            for topic in await self._admin.describe_topics(self._topics)
            if topic["error_code"] == 0
            for p in topic["partitions"]
        ]
        if not partitions:
            return []
        offsets = await self._admin.list_consumer_group_offsets(self.group, partitions=partitions)
        committed = {tp: meta.offset for tp, meta in offsets.items()}
        ends = await self._consumer.end_offsets(partitions)
        uncommitted = [tp for tp in partitions if committed.get(tp, -1) < 0]
        beginnings = await self._consumer.beginning_offsets(uncommitted) if uncommitted else {}
        return lag_of(ends, committed, beginnings)

    async def close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        # Closing clients of an unreachable broker may fail too; they are dropped either way.
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
