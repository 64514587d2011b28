"""Consumer lag: per consumer group and partition, the committed offset, the end offset and
how many records lie between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition

from orderctl import kafka


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    # None: the group has committed nothing on this partition yet; its lag then counts from
    # the partition's first record (the services' consumers start at the earliest offset).
    committed: int | None
    end: int
    lag: int


@dataclass(frozen=True)
class GroupLag:
    group: str
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int | None:
        """The total, or None for a group that has committed nothing (unknown, or not
        consuming yet)."""
        return sum(p.lag for p in self.partitions) if self.partitions else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "lag": self.lag,
            "partitions": [vars(p) for p in self.partitions],
        }


async def consumer_lag(bootstrap_servers: str, groups: list[str]) -> list[GroupLag]:
    """Lag over every partition of each topic the group has committed offsets on."""
    async with kafka.admin_client(bootstrap_servers) as admin:
        committed = {
            group: {
                tp: int(meta.offset)
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
            }
            for group in groups
        }
        topics = sorted({tp.topic for offsets in committed.values() for tp in offsets})
        partitions = {topic: await kafka.partitions_of(admin, topic) for topic in topics}
    all_partitions = [tp for tps in partitions.values() for tp in tps]
    starts: dict[TopicPartition, int] = {}
    ends: dict[TopicPartition, int] = {}
    if all_partitions:
        async with kafka.consumer(bootstrap_servers) as consumer:
            starts = await consumer.beginning_offsets(all_partitions)
            ends = await consumer.end_offsets(all_partitions)
    return [
        GroupLag(group, _partition_lags(offsets, partitions, starts, ends))
        for group, offsets in committed.items()
    ]


def _partition_lags(
    committed: dict[TopicPartition, int],
    partitions: dict[str, list[TopicPartition]],
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> list[PartitionLag]:
    lags = []
    for topic in sorted({tp.topic for tp in committed}):
        for tp in partitions[topic]:
            offset = committed.get(tp)
            position = offset if offset is not None and offset >= 0 else None
            end = int(ends[tp])
            behind = end - (position if position is not None else int(starts[tp]))
            lags.append(PartitionLag(topic, tp.partition, position, end, max(behind, 0)))
    return lags
