"""Graceful shutdown against real Kafka, PostgreSQL and SMTP: what a service has in hand when it
is told to stop finishes (an email being sent is sent once and recorded; a message or batch
being handled is stored and its offset committed), what outlasts the grace is handed back, and
a restart neither repeats nor loses anything.

Work is held in hand by real means, not by fakes: an SMTP server that answers DATA only when
the test lets it (a slow mail server), or a PostgreSQL lock the test holds (on a table, or the
audit chain's advisory lock) so that the service's next statement waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from audit import service as audit_service
from audit.adapters.repository import CHAIN_LOCK_KEY
from audit.adapters.unit_of_work import UnitOfWorkFactory as AuditUnitOfWorkFactory
from audit.app import build_engine as build_audit_engine
from audit.app import migrate as migrate_audit
from audit.config import Settings as AuditSettings
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_COMMANDS,
    ORDERS_EVENTS,
    Actor,
    ChangeOrderStatus,
    CreateOrder,
    Customer,
    OrderStatus,
    OrderStatusChanged,
)
from devstack import infra
from devstack.metrics import Scrape
from devstack.processes import Process, free_port, service_env, service_process
from devstack.smtp_sink import MaildirHandler, read_messages
from devstack.waiting import wait_until
from notifier.app import build_app as build_notifier
from notifier.app import migrate as migrate_notifier
from notifier.config import Settings as NotifierSettings
from order.app import migrate as migrate_order
from order.config import Settings as OrderSettings
from tests.integration.conftest import (
    MESSAGE_ID_DOMAIN,
    consumer_group_at_end,
    notifier_settings,
    produce,
    values_on_topic,
)
from tests.integration.notifier_support import customer_for, message_id, publish, status_changed

pytestmark = pytest.mark.integration

# Long enough never to be what ends the work a test holds in hand.
GRACE = "30"


@pytest.fixture(scope="module")
def own_databases() -> Iterator[infra.TestDatabases]:
    """Databases of this module's own, migrated: no other test's service works on them."""
    created = infra.create_test_databases("graceful")
    try:
        order, notifier, audit = (created.services[s] for s in ("order", "notifier", "audit"))
        migrate_order(
            OrderSettings(database_url=order.url, migration_database_url=order.migration_url)
        )
        migrate_notifier(
            NotifierSettings(
                database_url=notifier.url, migration_database_url=notifier.migration_url
            )
        )
        migrate_audit(
            AuditSettings(database_url=audit.url, migration_database_url=audit.migration_url)
        )
        yield created
    finally:
        infra.drop_test_databases(created)


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
            messages = [record.getMessage() for record in caplog.records]
            return [m for m in messages if m.startswith("dispatcher stopping")]

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


# --- the services as processes, stopped by SIGTERM with work in hand -------------------------


class HeldLock:
    """A lock the test holds in a transaction of its own: a service's statement that needs it
    waits, so what the service is handling stays in hand until `release()`."""

    def __init__(self, connection: asyncpg.Connection, waiting: str, *args: Any) -> None:
        self._connection = connection
        self._waiting = (waiting, *args)
        self._held = True

    async def waiters(self) -> int:
        """How many statements wait for the lock."""
        count: int = await self._connection.fetchval(*self._waiting)
        return count

    async def release(self) -> None:
        if self._held:
            await self._connection.execute("ROLLBACK")
            self._held = False


@contextlib.asynccontextmanager
async def holding(
    dsn: str, take: tuple[Any, ...], waiting: tuple[Any, ...]
) -> AsyncIterator[HeldLock]:
    """`take` (a statement and its arguments) run in a transaction held open; `waiting` counts
    who waits for what it took."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("BEGIN")
        await connection.execute(*take)
        lock = HeldLock(connection, *waiting)
        yield lock
        await lock.release()
    finally:
        await connection.close()


def table_locked(
    dsn: str, table: str, mode: str
) -> contextlib.AbstractAsyncContextManager[HeldLock]:
    return holding(
        dsn,
        (f"LOCK TABLE {table} IN {mode} MODE",),
        (
            "SELECT count(*) FROM pg_locks WHERE relation = $1::text::regclass AND NOT granted",
            table,
        ),
    )


def advisory_locked(dsn: str, key: int) -> contextlib.AbstractAsyncContextManager[HeldLock]:
    return holding(
        dsn,
        ("SELECT pg_advisory_xact_lock($1)", key),
        (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ),
    )


async def committed_offsets(kafka_bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The offsets `group` has committed, per partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {partition: meta.offset for partition, meta in offsets.items()}


async def committed_since(
    kafka_bootstrap: str, group: str, start: dict[TopicPartition, int], topic: str
) -> int:
    """How many records of `topic` the group committed since `start`."""
    now = await committed_offsets(kafka_bootstrap, group)
    return sum(offset - start[tp] for tp, offset in now.items() if tp.topic == topic)


async def stop_with_work_in_hand(process: Process, lock: HeldLock) -> None:
    """SIGTERM `process` while the lock holds what it is handling; release the lock once the
    shutdown has begun, then wait for the process to end."""
    assert process.popen is not None
    process.popen.send_signal(signal.SIGTERM)

    async def log() -> str:
        return await asyncio.to_thread(process.log_path.read_text, errors="replace")

    await wait_until(
        log,
        lambda text: "Waiting for application shutdown" in text,
        within=30,
        what=f"{process.name} to begin its shutdown",
    )
    await lock.release()
    returncode = await asyncio.to_thread(process.popen.wait, 60)
    # uvicorn finishes the shutdown, then re-raises the signal it caught.
    assert returncode in (0, -signal.SIGTERM), process.tail()
    assert "Application shutdown complete" in process.tail(), process.tail()


async def scrape(port: int) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return Scrape(response.text)


def events_for_new_orders(count: int) -> list[OrderStatusChanged]:
    return [status_changed(uuid4(), OrderStatus.READY, 4) for _ in range(count)]


async def count_rows(dsn: str, query: str, *args: Any) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval(query, *args)
    finally:
        await connection.close()
    return count


async def test_audit_stopped_mid_batch_records_it_commits_its_offsets_and_a_restart_goes_on(
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    group = f"audit-grace-{uuid4().hex[:8]}"
    for topic in (ORDERS_EVENTS, ORDERS_COMMAND_RESULTS, NOTIFICATIONS_EVENTS):
        await infra.commit_group_at_end(kafka_bootstrap, group, topic)
    start = await committed_offsets(kafka_bootstrap, group)
    port = free_port()
    env = service_env(
        "audit",
        database=own_databases.services["audit"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        # Batches smaller than what is published: the shutdown comes in the middle.
        extra={
            "AUDIT_CONSUMER_GROUP": group,
            "AUDIT_BATCH_SIZE": "10",
            "AUDIT_SHUTDOWN_GRACE_SECONDS": GRACE,
        },
    )
    dsn = own_databases.dsn("audit")
    events = events_for_new_orders(60)
    event_ids = [e.event_id for e in events]
    entries = "SELECT count(*) FROM audit_log WHERE event_id = ANY($1::uuid[])"

    first = service_process("audit", env, port, tmp_path, name="audit-first")
    try:
        await asyncio.to_thread(first.start)
        # Appending to the chain takes the chain's advisory lock first (as replicas do): the
        # batch in hand waits there. The table itself may not be locked, even by its owner.
        async with advisory_locked(dsn, CHAIN_LOCK_KEY) as lock:
            for event in events:
                await publish(producer, event.order_id, event)
            await wait_until(lock.waiters, bool, within=60, what="a batch waiting to be stored")
            await stop_with_work_in_hand(first, lock)
    finally:
        first.kill()

    recorded = await count_rows(dsn, entries, event_ids)
    assert 0 < recorded < len(events)  # the batch in hand finished, the consuming stopped
    assert await committed_since(kafka_bootstrap, group, start, ORDERS_EVENTS) == recorded

    restarted = service_process("audit", env, port, tmp_path, name="audit-restarted")
    try:
        await asyncio.to_thread(restarted.start)
        await wait_until(
            lambda: count_rows(dsn, entries, event_ids),
            lambda n: n == len(events),
            within=60,
            what="every event audited",
        )
        # Only what the first run left over came again.
        metrics = await scrape(port)
        received = metrics.value("audit_received_messages_total")
        assert received == len(events) - recorded, metrics
        await asyncio.to_thread(restarted.stop)
    finally:
        restarted.kill()
    assert await committed_since(kafka_bootstrap, group, start, ORDERS_EVENTS) == len(events)
    engine = build_audit_engine(AuditSettings(database_url=own_databases.urls["audit"]))
    try:
        report = await audit_service.verify(AuditUnitOfWorkFactory(engine))
    finally:
        await engine.dispose()
    assert report.ok, report


async def test_notifier_stopped_mid_event_records_it_commits_its_offset_and_mails_each_once(
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    group = await consumer_group_at_end(kafka_bootstrap, f"notifier-grace-{uuid4().hex[:8]}")
    start = await committed_offsets(kafka_bootstrap, group)
    sink = Controller(MaildirHandler(tmp_path / "mail"), hostname="127.0.0.1", port=free_port())
    sink.start()
    port = free_port()
    env = service_env(
        "notifier",
        database=own_databases.services["notifier"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        extra={
            "NOTIFIER_SMTP_PORT": str(sink.port),
            "NOTIFIER_CONSUMER_GROUP": group,
            "NOTIFIER_MESSAGE_ID_DOMAIN": MESSAGE_ID_DOMAIN,
            "NOTIFIER_DISPATCH_POLL_INTERVAL_SECONDS": "0.2",
            "NOTIFIER_SHUTDOWN_GRACE_SECONDS": GRACE,
        },
    )
    dsn = own_databases.dsn("notifier")
    events = events_for_new_orders(5)
    order_ids = [e.order_id for e in events]
    recorded_query = "SELECT count(*) FROM communication_events WHERE order_id = ANY($1::uuid[])"
    sent_query = recorded_query + " AND status = 'sent'"

    first = service_process("notifier", env, port, tmp_path, name="notifier-first")
    try:
        await asyncio.to_thread(first.start)
        # Recording an event's communications reads the opt-outs first, and nothing else in
        # the notifier touches that table: the event in hand waits there.
        async with table_locked(dsn, "opt_outs", "ACCESS EXCLUSIVE") as lock:
            # The first alone, so that it is the whole batch in hand (published together
            # before the consumer's first fetch, all five would be).
            await publish(producer, events[0].order_id, events[0])
            await wait_until(lock.waiters, bool, within=60, what="an event waiting to be stored")
            for event in events[1:]:
                await publish(producer, event.order_id, event)
            await stop_with_work_in_hand(first, lock)
        recorded = await count_rows(dsn, recorded_query, order_ids)
        assert recorded == 1  # the event in hand finished, the consuming stopped
        assert await committed_since(kafka_bootstrap, group, start, ORDERS_EVENTS) == recorded

        restarted = service_process("notifier", env, port, tmp_path, name="notifier-restarted")
        try:
            await asyncio.to_thread(restarted.start)
            await wait_until(
                lambda: count_rows(dsn, sent_query, order_ids),
                lambda n: n == len(events),
                within=60,
                what="every email sent",
            )
            metrics = await scrape(port)
            received = metrics.value("notifier_received_messages_total", handler=ORDERS_EVENTS)
            assert received == len(events) - recorded, metrics
            await asyncio.to_thread(restarted.stop)
        finally:
            restarted.kill()
    finally:
        first.kill()
        sink.stop()
    assert await committed_since(kafka_bootstrap, group, start, ORDERS_EVENTS) == len(events)
    recipients = {recipient_of(order_id) for order_id in order_ids}
    mailed = Counter(
        str(m["Message-ID"]) for m in read_messages(tmp_path / "mail") if m["To"] in recipients
    )
    assert mailed == Counter(message_id(event) for event in events)


async def test_a_command_in_hand_at_sigterm_is_applied_answered_and_committed_once(
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    group = await consumer_group_at_end(
        kafka_bootstrap, f"order-commands-grace-{uuid4().hex[:8]}", ORDERS_COMMANDS
    )
    port = free_port()
    env = service_env(
        "order",
        database=own_databases.services["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        extra={
            "ORDER_COMMANDS_CONSUMER_GROUP": group,
            "ORDER_RELAY_POLL_INTERVAL_SECONDS": "0.2",
            "ORDER_SHUTDOWN_GRACE_SECONDS": GRACE,
        },
    )
    dsn = own_databases.dsn("order")
    order_id = uuid4()
    upstream = Actor(id="upstream-shop", role="system")
    create = CreateOrder(
        command_id=uuid4(), order_id=order_id, customer=Customer(name="Lin"), actor=upstream
    )
    confirm = ChangeOrderStatus(
        command_id=uuid4(), order_id=order_id, status=OrderStatus.CONFIRMED, actor=upstream
    )

    first = service_process("order", env, port, tmp_path, name="order-first")
    try:
        await asyncio.to_thread(first.start)
        await produce(producer, ORDERS_COMMANDS, order_id, create)
        await answers_published(dsn, order_id, 1)
        # A status change first locks its order's row, which waits while the table is locked:
        # the command stays in hand.
        async with table_locked(dsn, "orders", "EXCLUSIVE") as lock:
            sent = await producer.send_and_wait(
                ORDERS_COMMANDS, confirm.model_dump_json().encode(), key=str(order_id).encode()
            )
            await wait_until(lock.waiters, bool, within=60, what="the command waiting")
            await stop_with_work_in_hand(first, lock)
    finally:
        first.kill()

    partition = TopicPartition(ORDERS_COMMANDS, sent.partition)
    assert (await committed_offsets(kafka_bootstrap, group))[partition] == sent.offset + 1
    connection = await asyncpg.connect(dsn)
    try:
        order = await connection.fetchrow(
            "SELECT status, version FROM orders WHERE id = $1", order_id
        )
    finally:
        await connection.close()
    assert (order["status"], order["version"]) == ("confirmed", 2)

    restarted = service_process("order", env, port, tmp_path, name="order-restarted")
    try:
        await asyncio.to_thread(restarted.start)
        # Per order, results are published in the order they were written: once the marker's
        # is out, anything the confirmation could have caused again is out too.
        marker = ChangeOrderStatus(
            command_id=uuid4(), order_id=order_id, status=OrderStatus.PREPARING, actor=upstream
        )
        await produce(producer, ORDERS_COMMANDS, order_id, marker)
        await answers_published(dsn, order_id, 3)
        await asyncio.to_thread(restarted.stop)
    finally:
        restarted.kill()
    # Other order services of the session consume orders.commands too (in groups of their
    # own) and answer on the same topic: this service's answers are its outbox rows.
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT event_id, payload FROM outbox WHERE topic = $1 AND key = $2 ORDER BY id",
            ORDERS_COMMAND_RESULTS,
            str(order_id),
        )
    finally:
        await connection.close()
    on_topic = Counter(
        r["event_id"]
        for r in await values_on_topic(kafka_bootstrap, ORDERS_COMMAND_RESULTS, str(order_id))
    )
    assert [on_topic[str(row["event_id"])] for row in rows] == [1, 1, 1]
    answered = [json.loads(row["payload"]) for row in rows]
    assert [(r["type"], r["command_id"], r["version"]) for r in answered] == [
        ("CommandAccepted", str(create.command_id), 1),
        ("CommandAccepted", str(confirm.command_id), 2),
        ("CommandAccepted", str(marker.command_id), 3),
    ]


async def answers_published(dsn: str, order_id: UUID, count: int) -> None:
    """Until `count` of this service's answers for the order are acknowledged by Kafka (other
    order services of the session answer the same commands on the same topic)."""

    async def published() -> int:
        connection = await asyncpg.connect(dsn)
        try:
            return int(
                await connection.fetchval(
                    "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2"
                    " AND published_at IS NOT NULL",
                    ORDERS_COMMAND_RESULTS,
                    str(order_id),
                )
            )
        finally:
            await connection.close()

    await wait_until(published, lambda n: n >= count, within=60, what=f"{count} answers")
