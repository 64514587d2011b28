"""The outbox relay against real Kafka and PostgreSQL: nothing lost while the broker is down,
per-order order kept, one publication per row with two relays."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID

import pytest
from faststream.kafka import KafkaBroker

from contracts import Actor
from devstack import infra
from order import service
from order.adapters.outbox_relay import OutboxRelay
from order.adapters.unit_of_work import UnitOfWork
from order.app import build_engine, migrate
from order.config import Settings
from order.domain.model import Customer
from tests.integration.conftest import OrderService, TopicReader

LIFECYCLE = ["confirmed", "preparing", "ready", "out_for_delivery"]


async def create(svc: OrderService) -> UUID:
    response = await svc.client.post(
        "/orders", json={"customer": {"name": "Kai"}}, headers=svc.as_admin()
    )
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def test_with_kafka_stopped_changes_succeed_and_every_event_follows_in_order(
    kafka: infra.Kafka, order_service_app: OrderService, order_events: TopicReader
) -> None:
    if not kafka.managed:
        pytest.skip("the broker is external; this test stops and restarts its own")
    orders = [await create(order_service_app) for _ in range(25)]

    kafka.stop()
    try:
        statuses = []
        for status in LIFECYCLE:
            for order_id in orders:
                response = await order_service_app.client.post(
                    f"/orders/{order_id}/status",
                    json={"status": status},
                    headers=order_service_app.as_admin(),
                )
                statuses.append(response.status_code)
        assert statuses == [200] * 100
    finally:
        kafka.start()

    await order_events.wait_for_keys({str(order_id) for order_id in orders}, within=120)
    for order_id in orders:
        events = await order_events.values_for(str(order_id), 5, within=120)
        assert [e["version"] for e in events] == [1, 2, 3, 4, 5], order_id
        assert [e.get("to") for e in events[1:]] == LIFECYCLE


@pytest.fixture
async def own_order_database() -> AsyncIterator[str]:
    """A database no other relay of the session publishes from."""
    created = infra.create_test_databases("relay")
    settings = Settings(
        database_url=created.urls["order"], migration_database_url=created.migration_urls["order"]
    )
    await asyncio.to_thread(migrate, settings)
    yield created.urls["order"]
    infra.drop_test_databases(created)


async def test_two_relays_publish_each_row_once(
    kafka_bootstrap: str, own_order_database: str, order_events: TopicReader
) -> None:
    settings = Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    engine = build_engine(settings)
    created = []
    async with UnitOfWork(engine) as uow:
        for _ in range(100):
            order = await service.create_order_in(
                uow, customer=Customer("R", None, None), actor=Actor(id="relay-test")
            )
            created.append(order.id)
    brokers = [KafkaBroker(kafka_bootstrap, enable_idempotence=True, acks="all") for _ in range(2)]
    relays = []
    for broker in brokers:
        await broker.start()
        connected = asyncio.Event()
        connected.set()
        relays.append(
            OutboxRelay(
                engine,
                broker,
                connected,
                database_url=own_order_database,
                batch_size=7,
                poll_interval=0.2,
                retry_interval=0.2,
            )
        )
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        await order_events.wait_for_keys({str(order_id) for order_id in created})
        await order_events.all_values(settle=1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for broker in brokers:
            await broker.stop()
        await engine.dispose()

    keys = Counter(r.key.decode() for r in order_events.records)
    assert all(keys[str(order_id)] == 1 for order_id in created), keys


async def test_published_rows_are_purged_after_the_retention(
    kafka_bootstrap: str, own_order_database: str
) -> None:
    settings = Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    engine = build_engine(settings)
    async with UnitOfWork(engine) as uow:
        for _ in range(3):
            await service.create_order_in(
                uow, customer=Customer("P", None, None), actor=Actor(id="p")
            )
    broker = KafkaBroker(kafka_bootstrap, enable_idempotence=True, acks="all")
    await broker.start()
    connected = asyncio.Event()
    connected.set()
    relay = OutboxRelay(
        engine,
        broker,
        connected,
        database_url=own_order_database,
        batch_size=10,
        poll_interval=0.2,
        retry_interval=0.2,
        retention=timedelta(0),
    )
    try:
        assert await relay.purge_published() == 0  # nothing published yet: nothing to purge
        assert await relay.publish_batch() == 3
        assert await relay.purge_published() == 3
        assert await relay.publish_batch() == 0
    finally:
        await broker.stop()
        await engine.dispose()
