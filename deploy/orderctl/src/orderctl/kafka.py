"""Kafka clients as orderctl uses them: short-lived, outside any consumer group unless named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class UnknownTopic(Exception):
    pass


@asynccontextmanager
async def admin_client(bootstrap_servers: str) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@asynccontextmanager
async def consumer(bootstrap_servers: str, group_id: str | None = None) -> AsyncIterator[Any]:
    """A consumer that commits only when told to (and only with a `group_id`)."""
    client = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def partitions_of(admin: Any, topic: str) -> list[TopicPartition]:
    """The topic's partitions. All topics' metadata is asked for, because asking for one
    missing topic by name may make the broker create it."""
    for described in await admin.describe_topics():
        if described["topic"] == topic:
            return sorted(TopicPartition(topic, p["partition"]) for p in described["partitions"])
    raise UnknownTopic(f"there is no topic {topic!r}")
