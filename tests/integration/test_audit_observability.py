"""The audit service's metrics and trace propagation against real Kafka and PostgreSQL: each
message of a consumed batch continues its own trace; /metrics counts recorded entries, dead
letters and the consumer lag on every audited topic."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from audit.entrypoints.consumer import AUDITED_TOPICS
from contracts import (
    ORDERS_COMMAND_RESULTS,
    ORDERS_EVENTS,
    Actor,
    Customer,
    OrderStatus,
    OrderStatusChanged,
    dlq_topic,
)
from devstack import infra
from devstack.metrics import Scrape
from devstack.waiting import wait_until
from tests.integration.conftest import audit_settings, produce, running_audit
from tests.observability import record_spans


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = record_spans()
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def audit(kafka_bootstrap: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The audit service in this process on a database of its own; its client and group."""
    own = infra.create_test_databases("aobs")
    settings = audit_settings(own, kafka_bootstrap, metrics_interval_seconds=0.2)
    try:
        async with running_audit(settings) as (client, _):
            yield client, settings.consumer_group
    finally:
        infra.drop_test_databases(own)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


async def test_each_message_continues_its_trace_and_metrics_count_entries_and_dead_letters(
    audit: tuple[httpx.AsyncClient, str], producer: AIOKafkaProducer, spans: InMemorySpanExporter
) -> None:
    client, group = audit
    order_id = uuid4()
    trace_id = uuid4().hex
    traceparent = f"00-{trace_id}-{uuid4().hex[:16]}-01".encode()
    traced, untraced = (
        OrderStatusChanged(
            order_id=order_id,
            from_status=OrderStatus.PENDING,
            to_status=OrderStatus.CONFIRMED,
            version=2,
            actor=Actor(id="alice", role="admin"),
            customer=Customer(name="Ann", email="ann@example.com"),
        )
        for order_id in (order_id, uuid4())
    )
    await produce(producer, ORDERS_EVENTS, order_id, traced, [("traceparent", traceparent)])
    await produce(producer, ORDERS_EVENTS, untraced.order_id, untraced)
    await produce(producer, ORDERS_COMMAND_RESULTS, order_id, b"not json")

    metrics = await wait_until(
        lambda: scrape(client),
        lambda m: (
            m.value("audit_entries_recorded_total") == 2
            and m.value("audit_dead_letters_total", topic=dlq_topic(ORDERS_COMMAND_RESULTS)) == 1
            and len(m.values("audit_consumer_lag", group=group))
            == len(AUDITED_TOPICS) * infra.TOPIC_PARTITIONS
        ),
        within=60,
        what="two entries, one dead letter and the lag of every audited partition",
    )
    topics = {labels["topic"] for labels in metrics.labels_of("audit_consumer_lag")}
    assert topics >= set(AUDITED_TOPICS)
    assert all(lag >= 0 for lag in metrics.values("audit_consumer_lag", group=group))
    assert (metrics.value("audit_received_messages_total") or 0) >= 3

    in_trace = [
        span
        for span in spans.get_finished_spans()
        if span.context is not None and format(span.context.trace_id, "032x") == trace_id
    ]
    assert [span.name for span in in_trace] == [f"{ORDERS_EVENTS} audit"]
    (audited,) = in_trace
    assert audited.parent is not None
    assert format(audited.parent.span_id, "016x") == traceparent.decode().split("-")[2]
    assert audited.links, "linked to the span of the batch it was consumed in"
