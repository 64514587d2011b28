"""What the notifier's integration tests share: order events for a customer of each test's
own, publishing them to orders.events, an SMTP server that can go down, and waiting for what
the notifier did."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller

from contracts import (
    ORDERS_EVENTS,
    Actor,
    Channel,
    Customer,
    Message,
    OrderStatus,
    OrderStatusChanged,
)
from devstack.smtp_sink import MaildirHandler, read_messages
from devstack.waiting import wait_until
from notifier.domain.dedupe import dedupe_key
from tests.integration.conftest import MESSAGE_ID_DOMAIN, produce

SHOP = Actor(id="shop", role="admin")


class SmtpSink:
    """aiosmtpd on a fixed port, writing to a maildir; `stop()` and `start()` simulate an
    outage of the mail server."""

    def __init__(self, maildir: Path, port: int) -> None:
        self.maildir = maildir
        self.port = port
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(
            MaildirHandler(self.maildir), hostname="127.0.0.1", port=self.port
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages_to(self, recipient: str) -> list[EmailMessage]:
        return [m for m in read_messages(self.maildir) if m["To"] == recipient]


def customer_for(order_id: UUID) -> Customer:
    """A recipient of the test's own, so its mail is told apart from every other test's."""
    return Customer(name="Ann O'Neil", email=f"ann+{order_id.hex[:12]}@example.com")


def status_changed(
    order_id: UUID, to: OrderStatus, version: int, frm: OrderStatus = OrderStatus.PENDING
) -> OrderStatusChanged:
    return OrderStatusChanged(
        order_id=order_id,
        from_status=frm,
        to_status=to,
        version=version,
        actor=SHOP,
        customer=customer_for(order_id),
    )


async def publish(
    producer: AIOKafkaProducer,
    order_id: UUID,
    value: bytes | Message,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """`value` on orders.events, keyed by its order."""
    await produce(producer, ORDERS_EVENTS, order_id, value, headers)


def message_id(event: OrderStatusChanged) -> str:
    email = event.customer.email
    assert email is not None
    key = dedupe_key(event.event_id, Channel.EMAIL, f"order_{event.to_status.value}", email)
    return f"<{key}@{MESSAGE_ID_DOMAIN}>"


async def communications(api: httpx.AsyncClient, order_id: UUID) -> list[dict[str, Any]]:
    response = await api.get("/communications", params={"order_id": str(order_id)})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def wait_for_mail(
    sink: SmtpSink, recipient: str, count: int, within: float = 60
) -> list[EmailMessage]:
    async def probe() -> list[EmailMessage]:
        return sink.messages_to(recipient)

    return await wait_until(
        probe, lambda mail: len(mail) >= count, within=within, what=f"{count} email(s)"
    )


async def wait_for_statuses(
    api: httpx.AsyncClient, order_id: UUID, statuses: list[str], within: float = 60
) -> list[dict[str, Any]]:
    return await wait_until(
        lambda: communications(api, order_id),
        lambda items: [item["status"] for item in items] == statuses,
        within=within,
        what=f"communications {statuses}",
    )
