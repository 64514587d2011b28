"""The outbox relay against real Kafka and PostgreSQL: nothing lost while the broker is down,
per-order order kept, one publication per row with two relays, a row Kafka refuses holding up
only its own order."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from faststream.kafka import KafkaBroker
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import Actor
from contracts.statuses import OrderStatus
from devstack import infra
from devstack.waiting import wait_until
from order import service
from order.adapters.broker import BrokerConnection
from order.adapters.outbox_relay import OutboxRelay, Relayed
from order.adapters.published_records import PublishedRecords
from order.adapters.tables import outbox, relay_positions
from order.adapters.unit_of_work import UnitOfWork
from order.app import build_engine, migrate
from order.config import Settings
from order.domain.model import Customer
from tests.integration.conftest import OrderService, TopicReader, commit_one_then_two_back_to_back

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
    relays = [
        OutboxRelay(
            engine,
            BrokerConnection(broker, retry_interval=0.2),
            PublishedRecords(kafka_bootstrap, timeout=30),
            database_url=own_order_database,
            batch_size=7,
            poll_interval=0.2,
            retry_interval=0.2,
        )
        for broker in brokers
    ]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        await order_events.wait_for_keys({str(order_id) for order_id in created})
        await order_events.all_values(settle=1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await engine.dispose()

    keys = Counter(r.key.decode() for r in order_events.records)
    assert all(keys[str(order_id)] == 1 for order_id in created), keys


async def create_orders(engine: AsyncEngine, count: int) -> None:
    """`count` orders, created in one transaction: as many outbox rows."""
    async with UnitOfWork(engine) as uow:
        for _ in range(count):
            await service.create_order_in(
                uow, customer=Customer("O", None, None), actor=Actor(id="outbox-test")
            )


async def outbox_ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as connection:
        return list((await connection.scalars(select(outbox.c.id).order_by(outbox.c.id))).all())


async def published_hours_ago(engine: AsyncEngine, ages: dict[int, int]) -> None:
    """Backdate the publication of outbox rows: row id → hours ago."""
    async with engine.begin() as connection:
        for row_id, hours in ages.items():
            await connection.execute(
                update(outbox)
                .where(outbox.c.id == row_id)
                .values(published_at=func.now() - timedelta(hours=hours))
            )


async def test_published_rows_past_the_retention_are_purged_oldest_first_a_batch_at_a_time(
    kafka_bootstrap: str, own_order_database: str
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    await create_orders(engine, 5)
    relay, kafka = await started_relay(
        engine, kafka_bootstrap, own_order_database, retention=timedelta(hours=1), purge_batch=3
    )
    try:
        assert await relay.purge_published() == 0  # nothing published yet: nothing to purge
        assert await relay.publish_batch() == Relayed(acknowledged=5, failed=0)
        assert await relay.purge_published() == 0  # published, but within the retention
        first, second, third, fourth, recent = await outbox_ids(engine)
        await published_hours_ago(engine, {first: 2, second: 5, third: 4, fourth: 3})

        assert await relay.purge_published() == 3
        assert await outbox_ids(engine) == [first, recent]  # the youngest past the retention
        assert await relay.purge_published() == 1
        assert await relay.purge_published() == 0
        assert await outbox_ids(engine) == [recent]
        assert await relay.publish_batch() == Relayed(acknowledged=0, failed=0)
    finally:
        await kafka.broker.stop()
        await engine.dispose()


async def test_a_running_relay_purges_a_backlog_past_the_retention_batch_after_batch(
    kafka_bootstrap: str, own_order_database: str
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    await create_orders(engine, 4)
    # A purge an hour apart: only its batches' following each other empties the backlog.
    relay, kafka = await started_relay(
        engine,
        kafka_bootstrap,
        own_order_database,
        retention=timedelta(hours=1),
        purge_interval=3600,
        purge_batch=1,
    )
    try:
        assert await relay.publish_batch() == Relayed(acknowledged=4, failed=0)
        *backlog, recent = await outbox_ids(engine)
        await published_hours_ago(engine, dict.fromkeys(backlog, 2))
        running = asyncio.create_task(relay.run())
        try:
            await wait_until(
                lambda: outbox_ids(engine),
                lambda ids: ids == [recent],
                within=10,
                what="the backlog past the retention to be purged",
            )
        finally:
            await relay.stop(running, grace=5)
    finally:
        await kafka.broker.stop()
        await engine.dispose()


async def started_relay(
    engine: AsyncEngine,
    kafka_bootstrap: str,
    database_url: str,
    retention: timedelta = timedelta(days=1),
    **relay_options: Any,
) -> tuple[OutboxRelay, BrokerConnection]:
    kafka = BrokerConnection(
        KafkaBroker(kafka_bootstrap, enable_idempotence=True, acks="all"), retry_interval=0.2
    )
    await kafka.connect()
    relay = OutboxRelay(
        engine,
        kafka,
        PublishedRecords(kafka_bootstrap, timeout=30),
        database_url=database_url,
        batch_size=10,
        retry_interval=0.2,
        retention=retention,
        **{"poll_interval": 0.2, **relay_options},
    )
    return relay, kafka


async def test_a_full_batch_says_more_rows_are_waiting(
    kafka_bootstrap: str, own_order_database: str
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    await create_orders(engine, 12)
    relay, kafka = await started_relay(engine, kafka_bootstrap, own_order_database)
    try:
        assert await relay.publish_batch() == Relayed(acknowledged=10, failed=0, more_waiting=True)
        assert await relay.publish_batch() == Relayed(acknowledged=2, failed=0)
    finally:
        await kafka.broker.stop()
        await engine.dispose()


async def test_commits_right_behind_the_one_that_woke_the_relay_share_its_batch(
    kafka_bootstrap: str, own_order_database: str
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    batches: list[int] = []
    relay, _ = await started_relay(
        engine,
        kafka_bootstrap,
        own_order_database,
        linger=0.5,
        poll_interval=60,  # only a notification wakes it
        on_acknowledged=lambda topic, count: batches.append(count),
    )
    running = asyncio.create_task(relay.run())

    async def create(name: str) -> None:
        async with UnitOfWork(engine) as uow:
            await service.create_order_in(
                uow, customer=Customer(name, None, None), actor=Actor(id="l")
            )

    try:
        await commit_one_then_two_back_to_back(create, batches)
    finally:
        await relay.stop(running, grace=5)
        await engine.dispose()

    assert batches == [1, 2]


async def test_an_orders_next_event_waits_until_the_one_before_is_acknowledged(
    kafka_bootstrap: str, own_order_database: str, order_events: TopicReader
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    async with UnitOfWork(engine) as uow:
        order = await service.create_order_in(
            uow, customer=Customer("Q", None, None), actor=Actor(id="q")
        )
        await service.create_order_in(uow, customer=Customer("O", None, None), actor=Actor(id="q"))
    for status in (OrderStatus.CONFIRMED, OrderStatus.PREPARING):
        async with UnitOfWork(engine) as uow:
            await service.change_order_status_in(uow, order.id, status, actor=Actor(id="q"))
    relay, kafka = await started_relay(engine, kafka_bootstrap, own_order_database)
    try:
        # One row of each order per batch: three of `order`, one of `other`. A batch that
        # held rows back says so, and the last one leaves nothing waiting.
        assert await relay.publish_batch() == Relayed(acknowledged=2, failed=0, more_waiting=True)
        assert await relay.publish_batch() == Relayed(acknowledged=1, failed=0, more_waiting=True)
        assert await relay.publish_batch() == Relayed(acknowledged=1, failed=0)
        assert await relay.publish_batch() == Relayed(acknowledged=0, failed=0)
    finally:
        await kafka.broker.stop()
        await engine.dispose()
    events = await order_events.values_for(str(order.id), 3)
    assert [e["version"] for e in events] == [1, 2, 3]


async def test_a_row_kafka_refuses_holds_up_only_its_own_order(
    kafka_bootstrap: str, own_order_database: str, order_events: TopicReader
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    refused_key = str(uuid4())
    async with engine.begin() as connection:
        # Over the producer's request size limit: aiokafka refuses it before sending.
        await connection.execute(
            insert(outbox).values(
                event_id=uuid4(),
                topic="orders.events",
                key=refused_key,
                event_type="Oversized",
                payload={"pad": "x" * 2_000_000},
                headers={},
            )
        )
    async with UnitOfWork(engine) as uow:
        order = await service.create_order_in(
            uow, customer=Customer("R", None, None), actor=Actor(id="r")
        )
    relay, _ = await started_relay(engine, kafka_bootstrap, own_order_database)
    relaying = asyncio.create_task(relay.run())
    try:
        await order_events.wait_for_keys({str(order.id)})
        # The relay replaced its producer after the refusal and goes on relaying other orders.
        async with UnitOfWork(engine) as uow:
            later = await service.create_order_in(
                uow, customer=Customer("L", None, None), actor=Actor(id="r")
            )
        await order_events.wait_for_keys({str(later.id)})
        await wait_until(
            lambda: unpublished_keys(engine),
            lambda keys: keys == [refused_key],
            within=30,
            what="every row but the refused one marked published",
        )
    finally:
        relaying.cancel()
        await asyncio.gather(relaying, return_exceptions=True)
        await engine.dispose()
    assert Counter(r.key.decode() for r in order_events.records)[str(order.id)] == 1


async def test_stopping_lets_the_batch_in_flight_be_acknowledged_and_marked(
    kafka: infra.Kafka, kafka_bootstrap: str, own_order_database: str, order_events: TopicReader
) -> None:
    if not kafka.managed:
        pytest.skip("the broker is external; this test stops and restarts its own")
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )
    relay, _ = await started_relay(engine, kafka_bootstrap, own_order_database)
    relaying = asyncio.create_task(relay.run())
    async with UnitOfWork(engine) as uow:
        await service.create_order_in(uow, customer=Customer("F", None, None), actor=Actor(id="s"))
    # Relayed while Kafka is up: the relay's look at what was on Kafka before it is done.
    await wait_until(
        lambda: unpublished_keys(engine), lambda keys: keys == [], within=30, what="the first row"
    )
    await asyncio.to_thread(kafka.stop)
    try:
        async with UnitOfWork(engine) as uow:
            orders = [
                await service.create_order_in(
                    uow, customer=Customer("S", None, None), actor=Actor(id="s")
                )
                for _ in range(5)
            ]
        # The relay holds its lock while it has a batch in hand, waiting for Kafka.
        await wait_until(
            lambda: relay_lock_holders(engine),
            lambda holders: holders == 1,
            within=30,
            what="the relay to take a batch",
        )
        stopping = asyncio.create_task(relay.stop(relaying, grace=120))
    finally:
        await asyncio.to_thread(kafka.start)
    await stopping
    assert not relaying.cancelled()
    async with engine.connect() as connection:
        waiting = await connection.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
        )
    await engine.dispose()
    assert waiting == 0
    await order_events.wait_for_keys({str(order.id) for order in orders})


async def relay_lock_holders(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(
            await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
            )
            or 0
        )


async def unpublished_keys(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        query = select(outbox.c.key).where(outbox.c.published_at.is_(None))
        return list((await connection.execute(query)).scalars())


async def test_rows_a_stopped_relay_sent_but_did_not_mark_are_marked_not_sent_again(
    kafka_bootstrap: str, own_order_database: str, order_events: TopicReader
) -> None:
    engine = build_engine(
        Settings(database_url=own_order_database, kafka_bootstrap_servers=kafka_bootstrap)
    )

    async def create_orders(count: int) -> list[UUID]:
        async with UnitOfWork(engine) as uow:
            return [
                (
                    await service.create_order_in(
                        uow, customer=Customer("K", None, None), actor=Actor(id="k")
                    )
                ).id
                for _ in range(count)
            ]

    earlier = await create_orders(2)
    first, first_kafka = await started_relay(engine, kafka_bootstrap, own_order_database)
    try:
        assert await first.publish_batch() == Relayed(acknowledged=2, failed=0)
        async with engine.connect() as connection:
            positions = [
                dict(r._mapping) for r in await connection.execute(select(relay_positions))
            ]
        assert positions, "acknowledged records move the relay's positions"
        unmarked = await create_orders(3)
        assert await first.publish_batch() == Relayed(acknowledged=3, failed=0)
    finally:
        await first_kafka.broker.stop()
    # What a relay killed between the acks and its commit leaves: records on Kafka, rows and
    # positions as before the batch.
    async with engine.begin() as connection:
        await connection.execute(
            update(outbox)
            .where(outbox.c.key.in_([str(o) for o in unmarked]))
            .values(published_at=None)
        )
        await connection.execute(delete(relay_positions))
        await connection.execute(insert(relay_positions).values(positions))

    second, second_kafka = await started_relay(engine, kafka_bootstrap, own_order_database)
    try:
        assert await second.publish_batch() == Relayed(acknowledged=0, failed=0)
        assert await unpublished_keys(engine) == []
    finally:
        await second_kafka.broker.stop()
        await engine.dispose()
    await order_events.wait_for_keys({str(o) for o in earlier + unmarked})
    await order_events.all_values(settle=1.0)
    keys = Counter(r.key.decode() for r in order_events.records)
    assert all(keys[str(o)] == 1 for o in earlier + unmarked), keys
