"""The two ceilings the system is measured against, on the same PostgreSQL and Kafka broker.

Limit A: raw asyncpg running exactly the SQL the order service sends for one status change
(as SQLAlchemy compiles it: the order read; then one statement, atomic on its own, with the
versioned UPDATE, the history INSERT and the outbox INSERT whose RETURNING sends the NOTIFY
that wakes the relay), swept over the number of connections. Two more shapes add what an HTTP
change (the token lookup) and a command (one transaction with the idempotency claim, the
result's outbox row and its record) add.

Limit B: raw aiokafka producing and consuming `OrderStatusChanged` payloads with the
services' producer settings (idempotent, acks=all, linger 5 ms, the relay's 500-row batches)
and a consumer with the notifier's fetch settings committing after each fetched batch, the
at-least-once rule of the services.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.payloads import BENCH_ACTOR, CUSTOMER, previous_status, status_changed, status_of
from bench.stats import Latency
from contracts import ORDERS_COMMAND_RESULTS, ORDERS_EVENTS
from notifier.adapters.broker import FETCH_MIN_BYTES
from notifier.config import Settings as NotifierSettings

# The order service's statements, verbatim as SQLAlchemy compiles them for asyncpg.
GET_ORDER = (
    "SELECT orders.id, orders.status, orders.version, orders.customer_name, "
    "orders.customer_email, orders.customer_phone, orders.created_at, orders.updated_at "
    "FROM orders WHERE orders.id = $1::UUID"
)
SAVE_STATUS = (
    "WITH changed AS \n(UPDATE orders SET status=$15::VARCHAR, version=$16::INTEGER, "
    "updated_at=$17::TIMESTAMP WITH TIME ZONE WHERE orders.id = $18::UUID AND "
    "orders.version = $19::INTEGER RETURNING orders.id), \nhistory AS \n(INSERT INTO "
    "order_status_history (order_id, event_id, from_status, to_status, version, actor, "
    "reason, occurred_at) SELECT changed.id AS id, $3::UUID AS anon_1, $9::VARCHAR AS anon_7, "
    "$10::VARCHAR AS anon_8, $11::INTEGER AS anon_9, $12::VARCHAR AS anon_10, "
    "$13::VARCHAR AS anon_11, $14::TIMESTAMP WITH TIME ZONE AS anon_12 \nFROM changed "
    "RETURNING order_status_history.order_id)\n INSERT INTO outbox (event_id, topic, key, "
    "event_type, payload, headers) SELECT $3::UUID AS anon_1, $4::VARCHAR AS anon_2, "
    "$5::VARCHAR AS anon_3, $6::VARCHAR AS anon_4, $7::JSONB AS anon_5, $8::JSONB AS anon_6 "
    "\nFROM history RETURNING pg_notify($1::VARCHAR, $2::VARCHAR) AS pg_notify_1"
)
INSERT_OUTBOX = (
    "INSERT INTO outbox (event_id, topic, key, event_type, payload, headers) VALUES "
    "($1::UUID, $2::VARCHAR, $3::VARCHAR, $4::VARCHAR, $5::JSONB, $6::JSONB) "
    "RETURNING pg_notify($7::VARCHAR, $8::VARCHAR) AS pg_notify_1"
)
AUTHENTICATE = (
    "SELECT api_tokens.name, api_tokens.role FROM api_tokens "
    "WHERE api_tokens.token_sha256 = $1::VARCHAR AND api_tokens.revoked_at IS NULL"
)
CLAIM_KEY = (
    "INSERT INTO idempotency_keys (scope, key, fingerprint) VALUES "
    "($1::VARCHAR, $2::VARCHAR, $3::VARCHAR) ON CONFLICT (scope, key) DO NOTHING"
)
RECORD_ANSWER = (
    "UPDATE idempotency_keys SET status_code=$1::INTEGER, response=$2::JSONB "
    "WHERE idempotency_keys.scope = $3::VARCHAR AND idempotency_keys.key = $4::VARCHAR"
)
OUTBOX_CHANNEL = "order_outbox"
ORDERS_PER_CONNECTION = 50
TOKEN_SHA256 = hashlib.sha256(b"bench-limit-a").hexdigest()

SHAPES = ("change", "http", "command")


@dataclass
class _Order:
    id: UUID
    version: int = 1


def _event(order: _Order, version: int, now: datetime) -> dict[str, Any]:
    return {
        "type": "OrderStatusChanged",
        "schema_version": 1,
        "event_id": str(uuid4()),
        "occurred_at": now.isoformat(),
        "correlation_id": None,
        "order_id": str(order.id),
        "from": previous_status(version).value,
        "to": status_of(version).value,
        "version": version,
        "actor": BENCH_ACTOR.model_dump(),
        "reason": None,
        "customer": CUSTOMER.model_dump(),
    }


def _next_version(order: _Order) -> int:
    # Walk the five lifecycle steps again and again; the database checks no transitions.
    return order.version + 1 if order.version < 6 else 2


async def _save_status(connection: asyncpg.Connection, order: _Order) -> None:
    """The change as the service makes it: read the order, then one statement writes the
    order, its history row and its outbox row, atomic on its own."""
    now = datetime.now(UTC)
    version = order.version + 1
    event = _event(order, _next_version(order), now)
    await connection.fetchrow(GET_ORDER, order.id)
    await connection.fetchval(
        SAVE_STATUS,
        OUTBOX_CHANNEL,
        "",
        UUID(event["event_id"]),
        ORDERS_EVENTS,
        str(order.id),
        "OrderStatusChanged",
        json.dumps(event),
        '{"correlation_id": ""}',
        event["from"],
        event["to"],
        version,
        BENCH_ACTOR.id,
        None,
        now,
        event["to"],
        version,
        now,
        order.id,
        order.version,
    )
    order.version = version


async def _change(connection: asyncpg.Connection, order: _Order, shape: str) -> None:
    if shape == "http":
        await connection.fetchrow(AUTHENTICATE, TOKEN_SHA256)
    if shape != "command":
        await _save_status(connection, order)
        return
    async with connection.transaction():
        key = str(uuid4())
        await connection.execute(CLAIM_KEY, "orders.commands", key, "f" * 64)
        await _save_status(connection, order)
        result = {"type": "CommandAccepted", "command_id": key, "version": order.version}
        await connection.fetchval(
            INSERT_OUTBOX,
            uuid4(),
            ORDERS_COMMAND_RESULTS,
            str(order.id),
            "CommandAccepted",
            json.dumps(result),
            '{"correlation_id": ""}',
            OUTBOX_CHANNEL,
            "",
        )
        await connection.execute(RECORD_ANSWER, None, json.dumps(result), "orders.commands", key)


async def _seed(connection: asyncpg.Connection, count: int) -> list[_Order]:
    now = datetime.now(UTC)
    orders = [_Order(uuid4()) for _ in range(count)]
    await connection.executemany(
        "INSERT INTO orders (id, status, version, customer_name, customer_email, "
        "customer_phone, created_at, updated_at) VALUES ($1, 'pending', 1, $2, $3, $4, $5, $5)",
        [(o.id, CUSTOMER.name, CUSTOMER.email, CUSTOMER.phone, now) for o in orders],
    )
    return orders


async def _measure(
    pool: asyncpg.Pool, orders: list[_Order], concurrency: int, shape: str, seconds: float
) -> dict[str, Any]:
    """`concurrency` connections, each changing its own orders (no lock waits between them,
    as in the system where one order has one change in flight) for `seconds`."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(mine: list[_Order]) -> None:
        async with pool.acquire() as connection:
            turn = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await _change(connection, mine[turn % len(mine)], shape)
                latencies.append(time.perf_counter() - started)
                turn += 1

    started = time.perf_counter()
    await asyncio.gather(
        *(
            worker(orders[i * ORDERS_PER_CONNECTION : (i + 1) * ORDERS_PER_CONNECTION])
            for i in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    latency = Latency.of_seconds(latencies)
    return {
        "shape": shape,
        "concurrency": concurrency,
        "changes": len(latencies),
        "changes_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": None if latency is None else latency.__dict__,
    }


async def limit_a(dsn: str, concurrencies: list[int], seconds: float) -> dict[str, Any]:
    """Changes per second of the raw statements, at each concurrency and the best one, then
    the HTTP and command shapes at the best concurrency. Leaves the tables empty again."""
    top = max(concurrencies)
    pool = await asyncpg.create_pool(dsn, min_size=top, max_size=top)
    try:
        async with pool.acquire() as connection:
            orders = await _seed(connection, top * ORDERS_PER_CONNECTION)
            await connection.execute(
                "INSERT INTO api_tokens (id, name, role, token_sha256) VALUES ($1, $2, $3, $4)",
                uuid4(),
                "bench-limit-a",
                "admin",
                TOKEN_SHA256,
            )
        # A short warm-up: connections open, statements prepared, caches filled.
        await _measure(pool, orders, top, "command", min(1.0, seconds))
        sweep = [await _measure(pool, orders, c, "change", seconds) for c in concurrencies]
        best = max(sweep, key=lambda point: point["changes_per_s"])
        shapes = {"change": best}
        for shape in ("http", "command"):
            shapes[shape] = await _measure(pool, orders, best["concurrency"], shape, seconds)
        async with pool.acquire() as connection:
            await connection.execute(
                "TRUNCATE orders, order_status_history, outbox, idempotency_keys, api_tokens"
            )
    finally:
        await pool.close()
    return {
        "statements": {
            "change": ["(no transaction) " + GET_ORDER, SAVE_STATUS],
            "http": ["(no transaction) " + AUTHENTICATE, "then the change"],
            "command": [
                "(one transaction) " + CLAIM_KEY,
                "the change",
                INSERT_OUTBOX,
                RECORD_ANSWER,
            ],
        },
        "sweep": sweep,
        "best_concurrency": best["concurrency"],
        "changes_per_s": best["changes_per_s"],
        "shapes": shapes,
    }


# --- limit B -------------------------------------------------------------------------------

LIMIT_B_TOPIC = "bench.limit-b"
RELAY_BATCH = 500  # rows the order relay sends before awaiting their acks
PARTITIONS = 6


def services_producer(bootstrap: str, client_id: str) -> AIOKafkaProducer:
    """The producer settings of the order service and the notifier (faststream passes them
    to aiokafka unchanged)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        client_id=client_id,
    )


async def _ensure_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()


async def produce_batched(
    producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]
) -> None:
    """As the relay does: send a batch without waiting, then await all its acks."""
    headers = [("content-type", b"application/json"), ("correlation_id", b"")]
    for start in range(0, len(messages), RELAY_BATCH):
        pending = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value in messages[start : start + RELAY_BATCH]
        ]
        await asyncio.gather(*pending)


async def _consume(
    bootstrap: str,
    topic: str,
    group: str,
    count: int,
    fetch: Callable[[AIOKafkaConsumer], Awaitable[int]],
) -> tuple[float, float]:
    """Consume `count` records from the start of `topic` in a fresh group; returns when the
    first record came and when the last did (time.perf_counter())."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_min_bytes=FETCH_MIN_BYTES,
        fetch_max_wait_ms=NotifierSettings.model_fields["consume_wait_ms"].default,
    )
    await consumer.start()
    try:
        consumed = await fetch(consumer)
        first = time.perf_counter()
        while consumed < count:
            consumed += await fetch(consumer)
        return first, time.perf_counter()
    finally:
        await consumer.stop()


async def _batch(consumer: AIOKafkaConsumer) -> int:
    batches = await consumer.getmany(timeout_ms=500, max_records=RELAY_BATCH)
    if batches:
        await consumer.commit()
    return sum(len(records) for records in batches.values())


async def _one(consumer: AIOKafkaConsumer) -> int:
    await consumer.getone()
    await consumer.commit()
    return 1


async def limit_b(bootstrap: str, events: int, one_by_one: int) -> dict[str, Any]:
    """Events per second through the broker: produced (relay style) while a consumer group
    takes them in batches, committing each; then a consumer committing after every single
    message (what a per-message subscriber does) over the first `one_by_one` of them."""
    await _ensure_topic(bootstrap, LIMIT_B_TOPIC)
    messages = [
        (str(order_id).encode(), status_changed(order_id, 2))
        for order_id in (uuid4() for _ in range(events))
    ]
    producer = services_producer(bootstrap, "bench-limit-b")
    await producer.start()
    try:
        # Metadata and the idempotent producer id first, as a running relay has them.
        await producer.partitions_for(LIMIT_B_TOPIC)
        started = time.perf_counter()
        consuming = asyncio.create_task(
            _consume(bootstrap, LIMIT_B_TOPIC, "bench-limit-b", events, _batch)
        )
        await produce_batched(producer, LIMIT_B_TOPIC, messages)
        produced = time.perf_counter()
        _, consumed = await consuming
    finally:
        await producer.stop()
    each_first, each_last = await _consume(
        bootstrap, LIMIT_B_TOPIC, "bench-limit-b-each", one_by_one, _one
    )
    return {
        "events": events,
        "payload_bytes": round(sum(len(v) for _, v in messages) / events),
        "produced_per_s": round(events / (produced - started), 1),
        "events_per_s": round(events / (consumed - started), 1),
        "one_by_one_commit": {
            "events": one_by_one,
            # Timed from the first record, so the group join is not counted.
            "events_per_s": round((one_by_one - 1) / (each_last - each_first), 1),
        },
    }
