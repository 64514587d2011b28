"""Reading and positioning Kafka topics for the fuzz tests, on the real broker."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from contracts import ORDERS_COMMANDS
from devstack import infra


async def group_at_end(bootstrap: str, group: str, topic: str = ORDERS_COMMANDS) -> str:
    """`group` positioned at the end of `topic` (orders.commands unless told)."""
    return await infra.commit_group_at_end(bootstrap, group, topic)


class TopicTail:
    """A topic read from its current end, outside any consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.records: list[Any] = []

    @classmethod
    async def open(cls, bootstrap: str, topic: str) -> TopicTail:
        partitions = await infra.partitions_of(bootstrap, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=2**21
        )
        await consumer.start()
        consumer.assign(partitions)
        await consumer.seek_to_end()
        return cls(consumer)

    async def poll(self) -> list[Any]:
        for batch in (await self.consumer.getmany(timeout_ms=200)).values():
            self.records.extend(batch)
        return self.records


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == ORDERS_COMMANDS
    }
