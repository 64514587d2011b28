"""The audit service against real Kafka and PostgreSQL: every message once, redelivery
changes nothing, poison dead-lettered, the table append-only, tampering found by verify."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from audit import service as audit_service
from audit.adapters.schema import upgrade_to_head
from audit.adapters.unit_of_work import UnitOfWorkFactory
from audit.app import build_app, build_engine
from audit.config import Settings
from contracts import (
    Actor,
    Channel,
    CommandRejected,
    CommunicationSent,
    Customer,
    Envelope,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
)
from devstack import infra
from devstack.waiting import wait_until
from tests.integration.conftest import TopicReader

ADMIN = Actor(id="alice", role="admin")
CUSTOMER = Customer(name="Ann", email="ann@example.com")
LIFECYCLE = [OrderStatus.CONFIRMED, OrderStatus.PREPARING, OrderStatus.READY]


@pytest.fixture(scope="session")
async def audit_clients(
    kafka_bootstrap: str, databases: infra.TestDatabases
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two audit replicas in this process, one consumer group, one database."""
    url = databases.urls["audit"]
    await asyncio.to_thread(upgrade_to_head, url)
    settings = Settings(database_url=url, kafka_bootstrap_servers=kafka_bootstrap)
    apps = [build_app(settings), build_app(settings)]
    async with (
        apps[0].router.lifespan_context(apps[0]),
        apps[1].router.lifespan_context(apps[1]),
    ):
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit")
            for app in apps
        ]
        for client in clients:
            await wait_until(
                lambda c=client: c.get("/health/ready"),
                lambda r: r.status_code == 200,
                within=60,
                what="audit replica ready",
            )
        yield clients
        for client in clients:
            await client.aclose()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await client.start()
    yield client
    await client.stop()


async def publish(
    producer: AIOKafkaProducer, topic: str, key: UUID, message: Envelope | bytes
) -> None:
    value = (
        message if isinstance(message, bytes) else message.model_dump_json(by_alias=True).encode()
    )
    await producer.send_and_wait(topic, value, key=str(key).encode())


def order_story(order_id: UUID) -> list[tuple[str, Envelope]]:
    """An order's life as the other services announce it."""
    story: list[tuple[str, Envelope]] = [
        (
            "orders.events",
            OrderCreated(
                order_id=order_id,
                status=OrderStatus.PENDING,
                version=1,
                customer=CUSTOMER,
                actor=ADMIN,
            ),
        )
    ]
    previous = OrderStatus.PENDING
    for version, status in enumerate(LIFECYCLE, start=2):
        story.append(
            (
                "orders.events",
                OrderStatusChanged(
                    order_id=order_id,
                    from_status=previous,
                    to_status=status,
                    version=version,
                    actor=ADMIN,
                    customer=CUSTOMER,
                ),
            )
        )
        previous = status
    story.append(
        (
            "orders.command-results",
            CommandRejected(
                command_id=uuid4(),
                order_id=order_id,
                actor=Actor(id="shop"),
                code="transition_not_allowed",
                reason="cannot skip",
                current_status=OrderStatus.READY,
                requested_status=OrderStatus.DELIVERED,
            ),
        )
    )
    story.append(
        (
            "notifications.events",
            CommunicationSent(
                communication_id=uuid4(),
                dedupe_key="d" * 64,
                order_id=order_id,
                source_event_id=story[1][1].event_id,
                channel=Channel.EMAIL,
                template="order_confirmed",
                recipient="ann@example.com",
                attempts=1,
            ),
        )
    )
    return story


async def timeline(client: httpx.AsyncClient, order_id: UUID) -> list[dict[str, Any]]:
    response = await client.get(f"/audit/orders/{order_id}/timeline")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_every_message_is_audited_once_and_redelivery_changes_nothing(
    audit_clients: list[httpx.AsyncClient], producer: AIOKafkaProducer
) -> None:
    order_id = uuid4()
    story = order_story(order_id)
    for topic, message in story:
        await publish(producer, topic, order_id, message)

    entries = await wait_until(
        lambda: timeline(audit_clients[0], order_id),
        lambda items: len(items) >= len(story),
        within=60,
        what="an entry per message",
    )
    assert Counter(e["event_id"] for e in entries) == Counter(str(m.event_id) for _, m in story)
    status_changes = [e for e in entries if e["action"] == "order.status_changed"]
    assert [e["after"]["status"] for e in status_changes] == [s.value for s in LIFECYCLE]
    rejected = next(e for e in entries if e["action"] == "order.command_rejected")
    assert (rejected["actor"], rejected["reason"]) == ("shop", "cannot skip")

    for topic, message in story:  # every message again
        await publish(producer, topic, order_id, message)
    marker = uuid4()
    await publish(producer, "orders.events", marker, order_story(marker)[0][1])
    await wait_until(
        lambda: timeline(audit_clients[1], marker),
        lambda items: len(items) == 1,
        within=60,
        what="marker",
    )
    assert len(await timeline(audit_clients[0], order_id)) == len(story)
    verified = (await audit_clients[1].get("/audit/verify")).json()
    assert verified["ok"] is True, verified


async def test_the_list_api_filters_and_pages(
    audit_clients: list[httpx.AsyncClient], producer: AIOKafkaProducer
) -> None:
    order_id = uuid4()
    for topic, message in order_story(order_id):
        await publish(producer, topic, order_id, message)
    await wait_until(
        lambda: timeline(audit_clients[0], order_id), lambda i: len(i) >= 6, within=60, what="story"
    )

    seen: list[str] = []
    cursor = None
    while True:
        params = {"entity_id": str(order_id), "action": "order.status_changed", "limit": 2}
        page = (
            await audit_clients[0].get(
                "/audit", params={**params, **({"cursor": cursor} if cursor else {})}
            )
        ).json()
        seen += [item["after"]["status"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s.value for s in reversed(LIFECYCLE)]  # newest first
    by_actor = (
        await audit_clients[0].get("/audit", params={"entity_id": str(order_id), "actor": "shop"})
    ).json()
    assert [i["action"] for i in by_actor["items"]] == ["order.command_rejected"]


@pytest.mark.parametrize(
    "poison",
    [b"not json", b'{"type": "OrderTeleported"}', b'{"type": "OrderStatusChanged", "version": -1}'],
    ids=["not-json", "unknown-type", "schema-invalid"],
)
async def test_poison_is_dead_lettered_and_auditing_carries_on(
    audit_clients: list[httpx.AsyncClient],
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
    poison: bytes,
) -> None:
    dlq = await read_topic("orders.events.dlq")
    key = uuid4()
    await publish(producer, "orders.events", key, poison)
    await publish(producer, "orders.events", key, order_story(key)[0][1])

    letters = await dlq.values_for(str(key), 1)
    audit_letters = [letter for letter in letters if letter["consumer_group"] == "audit"]
    assert audit_letters, letters
    assert audit_letters[0]["reason"].startswith("invalid message")
    entries = await wait_until(
        lambda: timeline(audit_clients[0], key), lambda i: len(i) == 1, within=60, what="next valid"
    )
    assert entries[0]["action"] == "order.created"


@pytest.fixture
async def own_audit_database() -> AsyncIterator[infra.TestDatabases]:
    created = infra.create_test_databases("tamper")
    await asyncio.to_thread(upgrade_to_head, created.urls["audit"])
    yield created
    infra.drop_test_databases(created)


async def test_the_table_refuses_update_and_delete_and_verify_names_a_tampered_entry(
    own_audit_database: infra.TestDatabases,
) -> None:
    engine = build_engine(Settings(database_url=own_audit_database.urls["audit"]))
    uow = UnitOfWorkFactory(engine)
    story = [message for _, message in order_story(uuid4())]
    assert await audit_service.record(uow, story) == len(story)
    await engine.dispose()
    victim = str(story[2].event_id)

    connection = await asyncpg.connect(own_audit_database.dsn("audit"))
    try:
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await connection.execute(
                "UPDATE audit_log SET actor = 'mallory' WHERE event_id = $1", victim
            )
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await connection.execute("DELETE FROM audit_log WHERE event_id = $1", victim)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await connection.execute("TRUNCATE audit_log")

        # As the table's owner (or a superuser) could: switch the guard off and edit a row.
        await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await connection.execute(
            "UPDATE audit_log SET actor = 'mallory' WHERE event_id = $1", victim
        )
        await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    finally:
        await connection.close()

    engine = build_engine(Settings(database_url=own_audit_database.urls["audit"]))
    report = await audit_service.verify(UnitOfWorkFactory(engine))
    await engine.dispose()
    assert not report.ok
    assert report.checked == 2
    assert report.first_broken is not None
    assert report.first_broken["event_id"] == victim

    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit", "verify"],
        env={**os.environ, "AUDIT_DATABASE_URL": own_audit_database.urls["audit"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 1, cli.stderr
    assert json.loads(cli.stdout)["first_broken"]["event_id"] == victim
