"""The notifier's metrics and trace propagation against real Kafka, PostgreSQL and SMTP: an
event's trace continues through recording, the SMTP send and the outcome's announcement;
/metrics counts sends by outcome, communications by status, dead letters and consumer lag."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts import NOTIFICATIONS_EVENTS, ORDERS_EVENTS, OrderStatus, dlq_topic
from devstack import infra
from devstack.metrics import Scrape
from devstack.processes import free_port
from devstack.smtp_sink import MaildirHandler
from devstack.waiting import wait_until
from tests.integration.conftest import (
    TokenIssuer,
    TopicReader,
    notifier_settings,
    running_notifier,
)
from tests.integration.notifier_support import (
    customer_for,
    publish,
    status_changed,
    wait_for_statuses,
)
from tests.observability import record_spans


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = record_spans()
    yield exporter
    exporter.shutdown()


@dataclass
class Sink:
    handler: MaildirHandler
    port: int


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    """A real SMTP server of the test's own; `handler.refused` addresses get a 450."""
    handler = MaildirHandler(tmp_path / "mail")
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield Sink(handler, controller.port)
    controller.stop()


@pytest.fixture
async def notifier(
    kafka_bootstrap: str, sink: Sink, token_issuer: TokenIssuer
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The notifier in this process on databases of its own; its client and consumer group."""
    own = infra.create_test_databases("nobs")
    settings = notifier_settings(
        own,
        kafka_bootstrap,
        sink.port,
        max_attempts=2,
        metrics_interval_seconds=0.2,
        order_service_url=token_issuer.url,
    )
    try:
        async with running_notifier(settings, token_issuer.as_viewer()) as (client, _):
            yield client, settings.consumer_group
    finally:
        infra.drop_test_databases(own)


async def scrape(client: httpx.AsyncClient) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def trace_id_of(traceparent: bytes | str) -> str:
    text = traceparent.decode() if isinstance(traceparent, bytes) else traceparent
    return text.split("-")[1]


async def test_an_events_trace_continues_through_the_smtp_send_to_the_announcement(
    notifier: tuple[httpx.AsyncClient, str],
    producer: AIOKafkaProducer,
    read_topic: Callable[[str], Awaitable[TopicReader]],
    spans: InMemorySpanExporter,
) -> None:
    api, _ = notifier
    announcements = await read_topic(NOTIFICATIONS_EVENTS)
    order_id = uuid4()
    trace_id = uuid4().hex
    traceparent = f"00-{trace_id}-{uuid4().hex[:16]}-01".encode()
    event = status_changed(order_id, OrderStatus.CONFIRMED, 2)
    await publish(producer, order_id, event, headers=[("traceparent", traceparent)])

    await wait_for_statuses(api, order_id, ["sent"])
    outcomes = await announcements.values_for(str(order_id), 2)
    assert [o["type"] for o in outcomes] == ["CommunicationQueued", "CommunicationSent"]
    records = [r for r in announcements.records if r.key == str(order_id).encode()]
    assert {trace_id_of(dict(r.headers)["traceparent"]) for r in records} == {trace_id}

    def names_in_trace() -> set[str]:
        return {
            span.name
            for span in spans.get_finished_spans()
            if span.context is not None and format(span.context.trace_id, "032x") == trace_id
        }

    await wait_until(
        names_in_trace,
        lambda names: (
            {
                f"{ORDERS_EVENTS} process",
                "deliver email",
                "smtp send",
                f"{NOTIFICATIONS_EVENTS} publish",
            }
            <= names
        ),
        within=10,
        what="consuming, sending and announcing in the event's trace",
    )


async def test_metrics_count_sends_by_outcome_communications_dead_letters_and_lag(
    notifier: tuple[httpx.AsyncClient, str],
    sink: Sink,
    producer: AIOKafkaProducer,
) -> None:
    api, group = notifier
    delivered, refused = uuid4(), uuid4()
    refused_address = customer_for(refused).email
    assert refused_address is not None
    sink.handler.refused.add(refused_address)
    await publish(producer, delivered, status_changed(delivered, OrderStatus.CONFIRMED, 2))
    await publish(producer, refused, status_changed(refused, OrderStatus.CONFIRMED, 2))
    await publish(producer, uuid4(), b"not json")
    await wait_for_statuses(api, delivered, ["sent"])
    await wait_for_statuses(api, refused, ["dead"])

    metrics = await wait_until(
        lambda: scrape(api),
        lambda m: (
            m.value("notifier_communications", status="dead") == 1
            and m.value("notifier_outbox_backlog") == 0
            and m.value("notifier_dead_letters_total", topic=dlq_topic(NOTIFICATIONS_EVENTS)) == 1
            and m.value("notifier_dead_letters_total", topic=dlq_topic(ORDERS_EVENTS)) == 1
            and len(m.values("notifier_consumer_lag", group=group)) == infra.TOPIC_PARTITIONS
        ),
        within=30,
        what="the dead communication, its dead letter, the poison's and the lag in the metrics",
    )
    assert metrics.value("notifier_sends_total", channel="email", outcome="sent") == 1
    # Two attempts at the refused address: the first failed, the second gave up.
    assert metrics.value("notifier_sends_total", channel="email", outcome="failed") == 1
    assert metrics.value("notifier_sends_total", channel="email", outcome="dead") == 1
    assert metrics.value("notifier_send_duration_seconds_count", channel="email") == 3
    assert metrics.value("notifier_communications", status="queued") == 0
    assert metrics.value("notifier_received_messages_total", handler=ORDERS_EVENTS) == 3
    # queued + sent, queued + failed + dead, and one dead letter, all acknowledged.
    assert metrics.value("notifier_outbox_relayed_total") == 6
    assert all(lag >= 0 for lag in metrics.values("notifier_consumer_lag", group=group))
    assert metrics.value("notifier_http_requests_total", handler="/communications") is not None
