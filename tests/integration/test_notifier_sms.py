"""SMS: the HTTP provider adapter against the devstack SMS sink (a real HTTP server), and the
notifier texting a customer with a phone on `out_for_delivery` only, once per event."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from contracts import Channel, Customer, OrderStatus, OrderStatusChanged
from devstack import infra
from devstack.processes import free_port
from devstack.sms_sink import SmsSink, read_sms
from notifier.adapters.sms import HttpSmsSender, HttpSmsSettings
from notifier.adapters.templates import TextTemplates
from notifier.domain.communication import Communication
from notifier.domain.dedupe import dedupe_key
from notifier.domain.delivery import DeliveryFailed, Undeliverable
from tests.integration.conftest import TokenIssuer, notifier_settings, running_notifier
from tests.integration.notifier_support import (
    SHOP,
    SmtpSink,
    publish,
    wait_for_mail,
    wait_for_statuses,
)

TOKEN = "sms-test-token"


@pytest.fixture(scope="module")
def sms_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmsSink]:
    sink = SmsSink(tmp_path_factory.mktemp("sms") / "sms.jsonl", free_port(), token=TOKEN)
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def mail_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    sink = SmtpSink(tmp_path_factory.mktemp("sms-mail"), free_port())
    sink.start()
    yield sink
    sink.stop()


@contextlib.asynccontextmanager
async def sender(
    url: str, token: str = TOKEN, timeout: float = 2.0
) -> AsyncIterator[HttpSmsSender]:
    settings = HttpSmsSettings(url, SecretStr(token), timeout=timeout)
    sending = HttpSmsSender(settings, TextTemplates())
    try:
        yield sending
    finally:
        await sending.aclose()


def sms_communication(phone: str = "+44 20 7946 0018") -> Communication:
    order_id = uuid4()
    return Communication.queue(
        event_id=uuid4(),
        order_id=order_id,
        channel=Channel.SMS,
        template="order_out_for_delivery",
        recipient=phone,
        context={"order_id": str(order_id)},
        now=datetime.now(UTC),
    )


# --- the provider adapter ------------------------------------------------------------------


async def test_an_accepted_sms_returns_the_provider_id_and_carries_the_dedupe_key(
    sms_sink: SmsSink,
) -> None:
    subject = sms_communication()
    async with sender(sms_sink.url) as sending:
        provider_id = await sending.send(subject)
    (kept,) = [s for s in read_sms(sms_sink.path) if s["idempotency_key"] == subject.dedupe_key]
    assert kept["id"] == provider_id
    assert kept["to"] == "+44 20 7946 0018"
    assert kept["body"] == f"Order {str(subject.order_id)[:8]}: your order is on its way to you."


async def test_a_refusal_is_permanent_and_an_unreachable_provider_is_retried(
    sms_sink: SmsSink,
) -> None:
    async with sender(sms_sink.url, token="wrong") as sending:
        with pytest.raises(Undeliverable, match="401"):
            await sending.send(sms_communication())
    async with sender(f"http://127.0.0.1:{free_port()}/messages") as sending:
        with pytest.raises(DeliveryFailed):
            await sending.send(sms_communication())


def test_the_sink_keeps_a_connection_open_between_sms_and_hangs_up_when_it_stops(
    tmp_path: Path,
) -> None:
    sink = SmsSink(tmp_path / "sms.jsonl", free_port(), token=TOKEN)
    sink.start()
    connection = http.client.HTTPConnection(sink.host, sink.port, timeout=5)

    def post(key: str) -> int:
        sms = {"to": "+44 20 7946 0018", "body": "hello", "idempotency_key": key}
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        connection.request("POST", "/messages", json.dumps(sms), headers)
        response = connection.getresponse()
        response.read()
        return response.status

    try:
        assert post("key-0") == 201
        first = connection.sock
        assert first is not None  # still open after the answer
        assert post("key-1") == 201
        assert connection.sock is first  # the second SMS went on the first one's connection
        assert [kept["idempotency_key"] for kept in read_sms(sink.path)] == ["key-0", "key-1"]

        sink.stop()
        with pytest.raises(ConnectionError):
            post("key-2")
    finally:
        connection.close()
        sink.stop()


class _Failing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


async def test_a_provider_error_is_retried() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/messages"
        async with sender(url) as sending:
            with pytest.raises(DeliveryFailed, match="503"):
                await sending.send(sms_communication())
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_a_provider_that_does_not_answer_in_time_is_retried() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the request, answers nothing, until the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with sender(f"http://127.0.0.1:{port}/messages", timeout=0.5) as sending:
            with pytest.raises(DeliveryFailed, match="TimeoutError"):
                await sending.send(sms_communication())
    finally:
        server.close()
        await server.wait_closed()


# --- the notifier texting ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def sms_notifier(
    kafka_bootstrap: str,
    databases: infra.TestDatabases,
    mail_sink: SmtpSink,
    sms_sink: SmsSink,
    token_issuer: TokenIssuer,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = notifier_settings(
        databases,
        kafka_bootstrap,
        mail_sink.port,
        notify_channels=[Channel.EMAIL, Channel.SMS],
        sms_url=sms_sink.url,
        sms_token=TOKEN,
        sms_timeout_seconds=2.0,
        order_service_url=token_issuer.url,
    )
    async with running_notifier(settings, token_issuer.as_viewer()) as (client, _):
        yield client


async def test_out_for_delivery_texts_a_customer_with_a_phone_once(
    sms_notifier: httpx.AsyncClient,
    sms_sink: SmsSink,
    mail_sink: SmtpSink,
    producer: AIOKafkaProducer,
) -> None:
    order_id = uuid4()
    customer = Customer(
        name="Ann", email=f"ann+{order_id.hex[:12]}@example.com", phone="+44 7700 900123"
    )
    assert customer.email is not None
    ready = OrderStatusChanged(
        order_id=order_id,
        from_status=OrderStatus.PENDING,
        to_status=OrderStatus.READY,
        version=4,
        actor=SHOP,
        customer=customer,
    )
    out = OrderStatusChanged(
        order_id=order_id,
        from_status=OrderStatus.READY,
        to_status=OrderStatus.OUT_FOR_DELIVERY,
        version=5,
        actor=SHOP,
        customer=customer,
    )
    await publish(producer, order_id, ready)
    for _ in range(3):
        await publish(producer, order_id, out)

    await wait_for_mail(mail_sink, customer.email, 2)
    items = await wait_for_statuses(sms_notifier, order_id, ["sent", "sent", "sent"])
    key = dedupe_key(out.event_id, Channel.SMS, "order_out_for_delivery", "+44 7700 900123")
    (texted,) = [s for s in read_sms(sms_sink.path) if s["to"] == "+44 7700 900123"]
    assert texted["idempotency_key"] == key
    (sms_item,) = [item for item in items if item["channel"] == "sms"]
    assert (sms_item["dedupe_key"], sms_item["template"]) == (key, "order_out_for_delivery")
    assert sms_item["provider_message_id"] == texted["id"]
