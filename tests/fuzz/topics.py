"""Reading and positioning Kafka topics for the fuzz tests, on the real broker."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts import ORDERS_COMMANDS
from devstack.waiting import wait_until


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions, once each has a leader (a topic just created has none yet, and
    clients leave such partitions out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:

        async def described() -> dict[str, Any]:
            (description,) = await admin.describe_topics([topic])
            return description  # type: ignore[no-any-return]

        description = await wait_until(
            described,
            lambda d: (
                not d["error_code"]
                and bool(d["partitions"])
                and all(p["leader"] >= 0 for p in d["partitions"])
            ),
            within=30,
            what=f"a leader for every partition of {topic}",
        )
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in description["partitions"]]


async def group_at_end(bootstrap: str, group: str, topic: str = ORDERS_COMMANDS) -> str:
    """Commits `group`'s offsets at the current end of `topic`, so a consumer started in it
    sees only what comes next, not every earlier test's messages."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()
    return group


class TopicTail:
    """A topic read from its current end, outside any consumer group."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        self.records: list[Any] = []

    @classmethod
    async def open(cls, bootstrap: str, topic: str) -> TopicTail:
        partitions = await partitions_of(bootstrap, topic)
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
