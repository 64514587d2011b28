"""The order service's metrics, readiness and trace propagation against real Kafka and
PostgreSQL: the outbox backlog grows while Kafka is unreachable and drains once it is back,
consumer lag is read from the broker, and a change's trace reaches its Kafka record."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import ORDERS_COMMANDS, ORDERS_EVENTS
from devstack import infra
from devstack.metrics import Scrape
from devstack.processes import free_port
from devstack.waiting import wait_until
from order.config import Settings
from servicekit.consumer_lag import ConsumerLagReader
from tests.integration.conftest import OrderService, TopicReader, running_order_service
from tests.observability import record_spans

FAST: dict[str, Any] = {
    "metrics_interval_seconds": 0.2,
    "kafka_check_seconds": 0.5,
    "relay_retry_seconds": 0.2,
}


@pytest.fixture
def own_database() -> Iterator[dict[str, Any]]:
    """A database no other relay of the session publishes from, as order settings."""
    created = infra.create_test_databases("obs")
    yield {
        "database_url": created.urls["order"],
        "migration_database_url": created.migration_urls["order"],
    }
    infra.drop_test_databases(created)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = record_spans()
    yield exporter
    exporter.shutdown()


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def create(svc: OrderService) -> UUID:
    response = await svc.client.post(
        "/orders", json={"customer": {"name": "Obs"}}, headers=svc.as_admin()
    )
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def test_the_backlog_grows_while_kafka_is_unreachable_and_drains_when_it_is_back(
    kafka_bootstrap: str, own_database: dict[str, Any]
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = Settings(**own_database, kafka_bootstrap_servers=nowhere, **FAST)
    async with running_order_service(settings) as svc:
        for _ in range(3):
            await create(svc)
        metrics = await wait_until(
            lambda: scrape(svc.client),
            lambda m: (
                m.value("order_outbox_backlog") == 3
                and (m.value("order_outbox_oldest_age_seconds") or 0) > 0
                and m.value("order_kafka_up") == 0
            ),
            within=30,
            what="a backlog of 3 and Kafka reported down",
        )
        failed_lag_readings = metrics.value(
            "order_metrics_sample_failures_total", sample="consumer_lag"
        )
        assert (failed_lag_readings or 0) > 0
        assert metrics.value("order_http_requests_total", handler="/orders", method="POST") == 3
        # Still ready: status changes do not need Kafka. The body says what is missing.
        ready = await svc.client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok", "database": "ok", "kafka": "unreachable"}

    settings = Settings(**own_database, kafka_bootstrap_servers=kafka_bootstrap, **FAST)
    async with running_order_service(settings) as svc:
        metrics = await wait_until(
            lambda: scrape(svc.client),
            lambda m: (
                m.value("order_outbox_backlog") == 0
                and m.value("order_outbox_oldest_age_seconds") == 0
                and m.value("order_kafka_up") == 1
            ),
            within=60,
            what="the backlog relayed",
        )
        assert metrics.value("order_outbox_relayed_total", topic=ORDERS_EVENTS) == 3
        published = metrics.value(
            "order_published_messages_total", destination=ORDERS_EVENTS, status="success"
        )
        assert published == 3
        ready = await svc.client.get("/health/ready")
        assert ready.json()["kafka"] == "ok"


async def test_metrics_show_the_commands_consumer_lag_and_dead_letters(
    kafka_bootstrap: str, own_database: dict[str, Any]
) -> None:
    settings = Settings(
        **own_database,
        kafka_bootstrap_servers=kafka_bootstrap,
        commands_consumer_group=f"obs-commands-{uuid4().hex[:8]}",
        **FAST,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with running_order_service(settings) as svc:
            poison_key = str(uuid4()).encode()
            await producer.send_and_wait(ORDERS_COMMANDS, b"not json", key=poison_key)
            metrics = await wait_until(
                lambda: scrape(svc.client),
                lambda m: (
                    (m.value("order_dead_letters_total", topic="orders.commands.dlq") or 0) >= 1
                    and len(m.values("order_consumer_lag", group=settings.commands_consumer_group))
                    == infra.TOPIC_PARTITIONS
                ),
                within=60,
                what="the poison command dead-lettered and the lag of every partition",
            )
    finally:
        await producer.stop()
    lags = metrics.values("order_consumer_lag", group=settings.commands_consumer_group)
    assert all(lag >= 0 for lag in lags)
    partitions = {
        labels["partition"]
        for labels in metrics.labels_of("order_consumer_lag")
        if labels["group"] == settings.commands_consumer_group
    }
    assert partitions == {str(p) for p in range(infra.TOPIC_PARTITIONS)}
    assert (metrics.value("order_received_messages_total", handler=ORDERS_COMMANDS) or 0) >= 1


@pytest.fixture
async def lag_topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    topic = f"obs-lag-{uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        yield topic
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def test_the_lag_reader_counts_what_a_group_has_not_committed(
    kafka_bootstrap: str, lag_topic: str
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(5):
            await producer.send_and_wait(lag_topic, b"x", partition=n % 2)
    finally:
        await producer.stop()
    group = f"obs-lag-{uuid4().hex[:8]}"
    reader = ConsumerLagReader(kafka_bootstrap, group, [lag_topic])
    try:
        # Nothing committed: the whole topic is behind.
        before = {(lag.topic, lag.partition): lag.lag for lag in await reader.read()}
        assert before == {(lag_topic, 0): 3, (lag_topic, 1): 2}

        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        first, second = TopicPartition(lag_topic, 0), TopicPartition(lag_topic, 1)
        try:
            consumer.assign([first, second])
            await consumer.commit({first: 3, second: 1})
        finally:
            await consumer.stop()
        after = {(lag.topic, lag.partition): lag.lag for lag in await reader.read()}
        assert after == {(lag_topic, 0): 0, (lag_topic, 1): 1}
    finally:
        await reader.close()


async def test_a_change_is_published_in_the_trace_of_its_request(
    kafka_bootstrap: str,
    own_database: dict[str, Any],
    spans: InMemorySpanExporter,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    settings = Settings(**own_database, kafka_bootstrap_servers=kafka_bootstrap, **FAST)
    events = await read_topic(ORDERS_EVENTS)
    trace_id = uuid4().hex
    caller = f"00-{trace_id}-{uuid4().hex[:16]}-01"
    async with running_order_service(settings) as svc:
        order_id = await create(svc)
        changed = await svc.client.post(
            f"/orders/{order_id}/status",
            json={"status": "confirmed"},
            headers={**svc.as_admin(), "traceparent": caller},
        )
        assert changed.status_code == 200, changed.text
        await events.values_for(str(order_id), 2)

    record = next(
        r for r in events.records if r.key == str(order_id).encode() and b'"confirmed"' in r.value
    )
    headers = dict(record.headers)
    assert headers["traceparent"].decode().split("-")[1] == trace_id

    def names_in_trace() -> set[str]:
        return {
            span.name
            for span in spans.get_finished_spans()
            if span.context is not None and format(span.context.trace_id, "032x") == trace_id
        }

    await wait_until(
        names_in_trace,
        lambda names: {"POST /orders/{order_id}/status", f"{ORDERS_EVENTS} publish"} <= names,
        within=10,
        what="the request's and the publication's spans in the caller's trace",
    )


async def test_a_status_changes_latency_is_bucketed_finely_enough_to_judge_a_25_ms_p99(
    kafka_bootstrap: str, own_database: dict[str, Any]
) -> None:
    settings = Settings(**own_database, kafka_bootstrap_servers=kafka_bootstrap, **FAST)
    async with running_order_service(settings) as svc:
        order_id = await create(svc)
        for status in ("confirmed", "preparing"):
            changed = await svc.client.post(
                f"/orders/{order_id}/status", json={"status": status}, headers=svc.as_admin()
            )
            assert changed.status_code == 200, changed.text
        metrics = await scrape(svc.client)

    route = {"handler": "/orders/{order_id}/status", "method": "POST"}
    buckets = dict(metrics.buckets("order_http_request_duration_seconds", **route))
    assert {0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05} <= buckets.keys()
    assert buckets[math.inf] == 2
    assert metrics.value("order_http_request_duration_seconds_count", **route) == 2
