"""Fixtures for testing one service at a time against the session's real Kafka and
PostgreSQL (the broker and databases come from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from contracts import ORDERS_EVENTS
from devstack import infra
from devstack.waiting import wait_until
from order import service as order_service
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.app import build_app, build_engine, migrate
from order.config import Settings as OrderSettings
from order.domain.auth import Role


@dataclass
class OrderService:
    client: httpx.AsyncClient
    admin_token: str
    viewer_token: str

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def as_viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.viewer_token}"}


@pytest.fixture(scope="session")
async def order_service_app(
    kafka_bootstrap: str, databases: infra.TestDatabases
) -> AsyncIterator[OrderService]:
    """The order service in this process (HTTP API and outbox relay), its lifespan running."""
    settings = OrderSettings(
        database_url=databases.urls["order"],
        migration_database_url=databases.migration_urls["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        relay_poll_interval_seconds=0.5,
    )
    await asyncio.to_thread(migrate, settings)  # alembic runs its own event loop
    engine = build_engine(settings)
    uow = UnitOfWorkFactory(engine)
    admin = await order_service.issue_token(uow, "it-admin", Role.ADMIN)
    viewer = await order_service.issue_token(uow, "it-viewer", Role.VIEWER)
    await engine.dispose()

    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
            yield OrderService(client, admin, viewer)


class TopicReader:
    """Reads a topic from the beginning, outside any consumer group, keeping every record."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def _poll(self) -> list[ConsumerRecord[bytes, bytes]]:
        for batch in (await self._consumer.getmany(timeout_ms=200)).values():
            self.records.extend(batch)
        return self.records

    async def wait_for_keys(self, keys: set[str], within: float = 60) -> None:
        """Until a record with each of `keys` has arrived."""
        wanted = {key.encode() for key in keys}
        await wait_until(
            self._poll,
            lambda records: wanted <= {r.key for r in records},
            within=within,
            what=f"records for {len(keys)} keys",
        )

    async def values_for(self, key: str, count: int, within: float = 30) -> list[dict[str, Any]]:
        """The JSON values of records with `key`, once at least `count` have arrived."""

        def matching() -> list[dict[str, Any]]:
            return [json.loads(r.value) for r in self.records if r.key == key.encode()]

        await wait_until(
            self._poll, lambda _: len(matching()) >= count, within=within, what=f"{count} x {key}"
        )
        return matching()

    async def all_values(self, settle: float = 1.0) -> list[bytes]:
        """Everything on the topic, after `settle` seconds without new records."""
        seen = -1
        while seen != len(self.records):
            seen = len(self.records)
            for batch in (await self._consumer.getmany(timeout_ms=int(settle * 1000))).values():
                self.records.extend(batch)
        return [r.value for r in self.records]


@pytest.fixture
async def read_topic(
    kafka_bootstrap: str,
) -> AsyncIterator[Callable[[str], Awaitable[TopicReader]]]:
    consumers: list[AIOKafkaConsumer] = []

    async def open_reader(topic: str) -> TopicReader:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        consumers.append(consumer)
        return TopicReader(consumer)

    yield open_reader
    for consumer in consumers:
        await consumer.stop()


@pytest.fixture
async def order_events(read_topic: Callable[[str], Awaitable[TopicReader]]) -> TopicReader:
    return await read_topic("orders.events")


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer, for publishing what upstream systems or other services would."""
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    await client.start()
    yield client
    await client.stop()


async def consumer_group_at_end(
    kafka_bootstrap: str, group: str, topic: str = ORDERS_EVENTS
) -> str:
    """Commits `group`'s offsets at the current end of `topic` and returns the group: a
    consumer started in it then sees only what the test publishes, not every earlier test's
    events (consumers of a new group start at the earliest offset)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()  # fills the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(ends)
    finally:
        await consumer.stop()
    return group
