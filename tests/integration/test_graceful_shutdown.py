"""Graceful shutdown against real Kafka, PostgreSQL and SMTP: what a service has in hand when it
is told to stop finishes (an email being sent is sent once and recorded; a message or batch
being handled is stored and its offset committed), what outlasts the grace is handed back, and
a restart neither repeats nor loses anything.

Work is held in hand by real means, not by fakes: an SMTP server that answers DATA only when
the test lets it (a slow mail server), or a table the test locks in PostgreSQL so that the
service's next statement on it waits."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.smtp import SMTP, Envelope, Session

from audit.app import migrate as migrate_audit
from audit.config import Settings as AuditSettings
from contracts import (
    OrderStatus,
)
from devstack import infra
from devstack.waiting import wait_until
from notifier.app import build_app as build_notifier
from notifier.app import migrate as migrate_notifier
from notifier.config import Settings as NotifierSettings
from order.app import migrate as migrate_order
from order.config import Settings as OrderSettings
from tests.integration.conftest import consumer_group_at_end
from tests.integration.test_notifier import (
    customer_for,
    message_id,
    notifier_settings,
    publish,
    status_changed,
)

pytestmark = pytest.mark.integration

# Long enough never to be what ends the work a test holds in hand.
GRACE = "30"


@pytest.fixture(scope="module")
def own_databases() -> Iterator[infra.TestDatabases]:
    """Databases of this module's own, migrated: no other test's service works on them."""
    created = infra.create_test_databases("graceful")
    urls = created.services
    migrate_order(OrderSettings(database_url=urls["order"].url, **_owner(urls["order"])))
    migrate_notifier(
        NotifierSettings(database_url=urls["notifier"].url, **_owner(urls["notifier"]))
    )
    migrate_audit(AuditSettings(database_url=urls["audit"].url, **_owner(urls["audit"])))
    yield created
    infra.drop_test_databases(created)


def _owner(database: infra.ServiceDatabase) -> dict[str, str]:
    return {"migration_database_url": database.migration_url}


# --- a slow SMTP server, the notifier in this process ---------------------------------------


class HeldSmtpHandler:
    """aiosmtpd handler that takes a message's DATA, then holds its answer until `release` is
    set. A message counts as accepted only once answered: if the client hangs up first, aiosmtpd
    cancels the handler and nothing is kept, as a real server would."""

    def __init__(self) -> None:
        self.data_received = asyncio.Event()
        self.release = asyncio.Event()
        self.accepted: list[EmailMessage] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_received.set()
        await self.release.wait()
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.accepted.append(parsed)
        return "250 Message accepted for delivery"

    def message_ids(self) -> list[str]:
        return [str(message["Message-ID"]) for message in self.accepted]


@pytest.fixture
async def held_smtp() -> AsyncIterator[tuple[HeldSmtpHandler, int]]:
    """The held SMTP server, in the test's event loop (so the test can release it), and its
    port."""
    handler = HeldSmtpHandler()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="held-smtp"), "127.0.0.1", 0
    )
    port: int = server.sockets[0].getsockname()[1]
    yield handler, port
    server.close()
    await server.wait_closed()


@contextlib.asynccontextmanager
async def notifier_in_process(
    settings: NotifierSettings,
) -> AsyncIterator[Callable[[], asyncio.Task[None]]]:
    """The notifier's lifespan, started; yields a function that begins its shutdown as a task
    (the test goes on while the notifier stops). Leaving the block finishes the shutdown."""
    app = build_notifier(settings)
    lifespan = contextlib.AsyncExitStack()
    await lifespan.enter_async_context(app.router.lifespan_context(app))
    shutdown: asyncio.Task[None] | None = None

    def begin_shutdown() -> asyncio.Task[None]:
        nonlocal shutdown
        if shutdown is None:
            shutdown = asyncio.create_task(lifespan.aclose(), name="notifier-shutdown")
        return shutdown

    try:
        yield begin_shutdown
    finally:
        await begin_shutdown()


async def communication_row(databases: infra.TestDatabases, order_id: UUID) -> dict[str, Any]:
    """The one communication of `order_id`, with its lease columns (not in the read API)."""
    connection = await asyncpg.connect(databases.dsn("notifier"))
    try:
        rows = await connection.fetch(
            "SELECT status, attempts, last_error, lease_owner, lease_until, next_attempt_at"
            " FROM communication_events WHERE order_id = $1",
            order_id,
        )
    finally:
        await connection.close()
    assert len(rows) == 1, rows
    return dict(rows[0])


def recipient_of(order_id: UUID) -> str:
    recipient = customer_for(order_id).email
    assert recipient is not None
    return recipient


async def test_an_email_in_flight_when_shutdown_begins_is_sent_once_and_recorded_sent(
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    held_smtp: tuple[HeldSmtpHandler, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, port = held_smtp
    caplog.set_level(logging.INFO, logger="notifier.entrypoints.worker")
    group = await consumer_group_at_end(kafka_bootstrap, f"notifier-grace-{uuid4().hex[:8]}")
    settings = notifier_settings(
        own_databases,
        kafka_bootstrap,
        port,
        consumer_group=group,
        smtp_timeout_seconds=20.0,
        lease_seconds=60.0,
        shutdown_grace_seconds=float(GRACE),
    )
    order_id = uuid4()
    event = status_changed(order_id, OrderStatus.READY, 4)

    async with notifier_in_process(settings) as begin_shutdown:
        await publish(producer, order_id, event)
        async with asyncio.timeout(60):
            await server.data_received.wait()
        stopping = begin_shutdown()

        async def stopping_log() -> list[str]:
            return [r.getMessage() for r in caplog.records if "dispatcher stopping" in r.msg]

        # Consuming has stopped and the dispatcher waits for its sends: only now may the
        # server answer, so the send completes inside the shutdown, not before it.
        await wait_until(stopping_log, bool, within=60, what="the dispatcher to be stopping")
        assert not stopping.done()
        server.release.set()
        async with asyncio.timeout(60):
            await stopping

    assert server.message_ids() == [message_id(event)]
    row = await communication_row(own_databases, order_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 1, None)
    assert (row["lease_owner"], row["lease_until"]) == (None, None)


async def test_a_send_outlasting_the_grace_is_handed_back_and_sent_once_after_a_restart(
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    held_smtp: tuple[HeldSmtpHandler, int],
) -> None:
    server, port = held_smtp
    group = await consumer_group_at_end(kafka_bootstrap, f"notifier-grace-{uuid4().hex[:8]}")
    grace = 1.0
    settings = notifier_settings(
        own_databases,
        kafka_bootstrap,
        port,
        consumer_group=group,
        smtp_timeout_seconds=30.0,
        lease_seconds=60.0,
        shutdown_grace_seconds=grace,
    )
    order_id = uuid4()
    event = status_changed(order_id, OrderStatus.READY, 4)

    async with notifier_in_process(settings) as begin_shutdown:
        await publish(producer, order_id, event)
        async with asyncio.timeout(60):
            await server.data_received.wait()
        # The server never answers this session: the send outlasts the grace. The shutdown
        # ends soon after the grace, not when the SMTP timeout gives up on the server.
        started = time.monotonic()
        await begin_shutdown()
        assert time.monotonic() - started < grace + 7

    row = await communication_row(own_databases, order_id)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert "interrupted by a shutdown" in row["last_error"]
    assert (row["lease_owner"], row["lease_until"]) == (None, None)
    assert row["next_attempt_at"] <= datetime.now(UTC)
    assert server.accepted == []

    server.release.set()
    async with notifier_in_process(settings):

        async def status() -> str:
            return str((await communication_row(own_databases, order_id))["status"])

        await wait_until(status, lambda s: s == "sent", within=60, what="the email sent")
    assert server.message_ids() == [message_id(event)]
    assert (await communication_row(own_databases, order_id))["attempts"] == 2
