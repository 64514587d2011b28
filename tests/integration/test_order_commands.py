"""Upstream commands on the real `orders.commands` topic: applied once per command_id, each
answered on `orders.command-results`, poison messages dead-lettered without stopping."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiokafka import AIOKafkaProducer

from contracts import (
    ORDERS_COMMANDS,
    Actor,
    ChangeOrderStatus,
    CreateOrder,
    Customer,
    Message,
    OrderStatus,
)
from tests.integration.conftest import OrderService, TopicReader, produce

UPSTREAM = Actor(id="upstream-shop", role="system")


async def send(
    producer: AIOKafkaProducer,
    key: UUID,
    value: bytes | Message,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    await produce(producer, ORDERS_COMMANDS, key, value, headers)


def create_command(order_id: UUID) -> CreateOrder:
    return CreateOrder(
        command_id=uuid4(),
        order_id=order_id,
        customer=Customer(name="Lin", email="lin@example.com"),
        actor=UPSTREAM,
    )


def unstorable_create(order_id: UUID) -> CreateOrder:
    """A command PostgreSQL refuses to store: a NUL character in a text."""
    return CreateOrder(
        command_id=uuid4(),
        order_id=order_id,
        customer=Customer(name="Nul\u0000Byte"),
        actor=UPSTREAM,
    )


def change_command(order_id: UUID, status: OrderStatus, **fields: Any) -> ChangeOrderStatus:
    return ChangeOrderStatus(
        command_id=uuid4(), order_id=order_id, status=status, actor=UPSTREAM, **fields
    )


async def test_commands_apply_and_are_answered(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
    order_events: TopicReader,
) -> None:
    results = await read_topic("orders.command-results")
    order_id = uuid4()
    create = create_command(order_id)
    confirm = change_command(order_id, OrderStatus.CONFIRMED, expected_version=1)

    await send(producer, order_id, create)
    await send(producer, order_id, confirm)

    answered = await results.values_for(str(order_id), 2)
    assert [(r["type"], r["command_id"], r["version"]) for r in answered] == [
        ("CommandAccepted", str(create.command_id), 1),
        ("CommandAccepted", str(confirm.command_id), 2),
    ]
    events = await order_events.values_for(str(order_id), 2)
    assert [(e["type"], e["actor"]["id"]) for e in events] == [
        ("OrderCreated", "upstream-shop"),
        ("OrderStatusChanged", "upstream-shop"),
    ]


async def test_a_command_sent_ten_times_applies_once(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
    order_events: TopicReader,
) -> None:
    results = await read_topic("orders.command-results")
    order_id = uuid4()
    await send(producer, order_id, create_command(order_id))
    confirm = change_command(order_id, OrderStatus.CONFIRMED)
    for _ in range(10):
        await send(producer, order_id, confirm)
    marker = change_command(order_id, OrderStatus.PREPARING)
    await send(producer, order_id, marker)  # once this is answered, all ten were handled

    answered = await results.values_for(str(order_id), 3)
    assert [r["command_id"] for r in answered] == [
        answered[0]["command_id"],
        str(confirm.command_id),
        str(marker.command_id),
    ]
    events = await order_events.values_for(str(order_id), 3)
    assert [e["version"] for e in events] == [1, 2, 3]
    assert len(await order_events.values_for(str(order_id), 3)) == 3


async def test_a_forbidden_change_is_rejected_with_the_reason(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    results = await read_topic("orders.command-results")
    order_id = uuid4()
    await send(producer, order_id, create_command(order_id))
    skip = change_command(order_id, OrderStatus.READY)
    await send(producer, order_id, skip)

    answered = await results.values_for(str(order_id), 2)
    rejected = answered[1]
    assert rejected["type"] == "CommandRejected"
    assert rejected["command_id"] == str(skip.command_id)
    assert rejected["code"] == "transition_not_allowed"
    assert (rejected["current_status"], rejected["requested_status"]) == ("pending", "ready")
    assert "allowed next: confirmed, cancelled" in rejected["reason"]


JSON_LABEL = [("content-type", b"application/json")]


@pytest.mark.parametrize(
    ("poison", "headers", "reason_part"),
    [
        (b"\x00\xffnot json", None, "Invalid JSON"),
        (b"not json, though labelled so", JSON_LABEL, "Invalid JSON"),
        (b'{"type": "DeleteEverything", "command_id": "x"}', JSON_LABEL, "DeleteEverything"),
        (b'{"type": "ChangeOrderStatus", "order_id": "nope"}', None, "order_id"),
        (b'{"type": "CreateOrder", "pad": "' + b"x" * 600_000 + b'"}', None, "customer"),
        (b"{}", [("trace", b"\xff\xfe")], "type"),
    ],
    ids=[
        "not-json",
        "not-json-labelled-json",
        "unknown-type",
        "schema-invalid",
        "oversized",
        "binary-header",
    ],
)
async def test_poison_is_dead_lettered_and_the_consumer_carries_on(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
    poison: bytes,
    headers: list[tuple[str, bytes]] | None,
    reason_part: str,
) -> None:
    dlq = await read_topic("orders.commands.dlq")
    results = await read_topic("orders.command-results")
    key = uuid4()
    await send(producer, key, poison, headers)
    await send(producer, key, create_command(key), [("trace", b"\xff")])

    letters = await dlq.values_for(str(key), 1)
    assert letters[0]["source_topic"] == "orders.commands"
    assert letters[0]["consumer_group"] == "order-commands"
    assert reason_part in letters[0]["reason"]
    assert letters[0]["payload"][:20] == poison.decode("utf-8", errors="replace")[:20]
    answered = await results.values_for(str(key), 1)
    assert answered[0]["type"] == "CommandAccepted"


async def test_a_command_the_database_cannot_store_is_dead_lettered(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    dlq = await read_topic("orders.commands.dlq")
    results = await read_topic("orders.command-results")
    key = uuid4()
    await send(producer, key, unstorable_create(key))
    await send(producer, key, create_command(key))

    (letter,) = await dlq.values_for(str(key), 1)
    assert letter["reason"].startswith("unstorable:")
    answered = await results.values_for(str(key), 1)
    assert answered[0]["type"] == "CommandAccepted"


async def test_a_command_the_database_refuses_holds_up_none_consumed_with_it(
    order_service_app: OrderService,
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    dlq = await read_topic("orders.commands.dlq")
    results = await read_topic("orders.command-results")
    key = uuid4()
    create = create_command(key)
    unstorable = unstorable_create(key)
    confirm = change_command(key, OrderStatus.CONFIRMED, expected_version=1)
    # Sent together, so that they are likely consumed in one batch (one transaction).
    for command in (create, unstorable, confirm):
        await producer.send(
            "orders.commands", command.model_dump_json().encode(), key=str(key).encode()
        )
    await producer.flush()

    (letter,) = await dlq.values_for(str(key), 1)
    assert letter["reason"].startswith("unstorable:")
    assert str(unstorable.command_id) in letter["payload"]
    answered = await results.values_for(str(key), 2)
    assert [(r["type"], r["command_id"]) for r in answered] == [
        ("CommandAccepted", str(create.command_id)),
        ("CommandAccepted", str(confirm.command_id)),
    ]
