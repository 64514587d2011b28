"""The audit service against real Kafka and PostgreSQL: every message once, redelivery
changes nothing, poison dead-lettered, the table append-only, tampering found by verify, two
replicas (processes) on one consumer group keep one valid chain."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from audit import service as audit_service
from audit.adapters.unit_of_work import UnitOfWorkFactory
from audit.app import build_app, build_engine, migrate
from audit.config import Settings
from audit.domain.entries import AuditedMessage, audit_event_id
from contracts import (
    NOTIFICATIONS_EVENTS,
    ORDERS_COMMAND_RESULTS,
    ORDERS_EVENTS,
    Actor,
    Channel,
    CommandAccepted,
    CommandRejected,
    CommunicationSent,
    Customer,
    OrderCreated,
    OrderStatus,
    OrderStatusChanged,
    dlq_topic,
)
from devstack import infra
from devstack.processes import Process, free_port, service_env, service_process
from devstack.waiting import wait_until
from tests.integration.conftest import TokenIssuer, produce, serving
from tests.integration.read_api_auth import (
    TOKEN_CACHE_SECONDS,
    check_openapi,
    check_read_api_auth,
    check_token_cache,
    check_unreachable_order_service,
    get_without_token,
)

pytestmark = pytest.mark.integration

ADMIN = Actor(id="alice", role="admin")
CUSTOMER = Customer(name="Ann", email="ann@example.com")
LIFECYCLE = [OrderStatus.CONFIRMED, OrderStatus.PREPARING, OrderStatus.READY]
AUDITED = (ORDERS_EVENTS, ORDERS_COMMAND_RESULTS, NOTIFICATIONS_EVENTS)

Story = list[tuple[str, AuditedMessage]]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def audit_url(databases: infra.TestDatabases) -> str:
    """The session's audit database, migrated."""
    settings = Settings(
        database_url=databases.urls["audit"],
        migration_database_url=databases.migration_urls["audit"],
    )
    await asyncio.to_thread(migrate, settings)  # alembic runs its own event loop
    return databases.urls["audit"]


@pytest.fixture(scope="module")
async def audit_replicas(
    kafka_bootstrap: str, audit_url: str, token_issuer: TokenIssuer
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Two audit replicas in this process: consumer group "audit", one database; the clients
    read with a viewer token."""
    settings = Settings(
        database_url=audit_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        order_service_url=token_issuer.url,
        token_cache_seconds=TOKEN_CACHE_SECONDS,
    )
    headers = token_issuer.as_viewer()
    async with (
        serving(build_app(settings), headers=headers, ready=True) as first,
        serving(build_app(settings), headers=headers, ready=True) as second,
    ):
        yield [first, second]


@pytest.fixture
async def dead_letters(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """Reads `orders.events.dlq` from the beginning, outside any consumer group."""
    consumer = AIOKafkaConsumer(
        dlq_topic(ORDERS_EVENTS),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    yield consumer
    await consumer.stop()


@pytest.fixture
def own_audit_database() -> Iterator[infra.TestDatabases]:
    """A database of the test's own, migrated, so what it does to the chain stays there."""
    created = infra.create_test_databases("audit")
    database = created.services["audit"]
    migrate(Settings(database_url=database.url, migration_database_url=database.migration_url))
    yield created
    infra.drop_test_databases(created)


# --- helpers ----------------------------------------------------------------------------


async def publish_all(producer: AIOKafkaProducer, key: UUID, story: Story) -> None:
    for topic, message in story:
        await produce(producer, topic, key, message)


def created(order_id: UUID) -> OrderCreated:
    return OrderCreated(
        order_id=order_id, status=OrderStatus.PENDING, version=1, customer=CUSTOMER, actor=ADMIN
    )


def order_story(order_id: UUID) -> Story:
    """An order's life as the other services announce it, on all three audited topics."""
    story: Story = [(ORDERS_EVENTS, created(order_id))]
    previous = OrderStatus.PENDING
    for version, status in enumerate(LIFECYCLE, start=2):
        change = OrderStatusChanged(
            order_id=order_id,
            from_status=previous,
            to_status=status,
            version=version,
            actor=ADMIN,
            customer=CUSTOMER,
        )
        story.append((ORDERS_EVENTS, change))
        previous = status
    story.append(
        (
            ORDERS_COMMAND_RESULTS,
            CommandAccepted(command_id=uuid4(), order_id=order_id, actor=ADMIN, version=2),
        )
    )
    story.append((ORDERS_COMMAND_RESULTS, refusal(order_id, uuid4())))
    story.append(
        (
            NOTIFICATIONS_EVENTS,
            CommunicationSent(
                communication_id=uuid4(),
                dedupe_key=uuid4().hex * 2,
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


def refusal(order_id: UUID, command_id: UUID) -> CommandRejected:
    return CommandRejected(
        command_id=command_id,
        order_id=order_id,
        actor=Actor(id="shop"),
        code="transition_not_allowed",
        reason="cannot skip",
        current_status=OrderStatus.READY,
        requested_status=OrderStatus.DELIVERED,
    )


STORY_LENGTH = len(order_story(uuid4()))


def audit_ids(story: Story) -> Counter[str]:
    return Counter(str(audit_event_id(message)) for _, message in story)


async def timeline(client: httpx.AsyncClient, order_id: UUID) -> list[dict[str, Any]]:
    response = await client.get(f"/audit/orders/{order_id}/timeline")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def entry_count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM audit_log")
        return count
    finally:
        await connection.close()


async def mark_every_partition(producer: AIOKafkaProducer) -> list[UUID]:
    """A message on every partition of every audited topic: once all are audited, everything
    published before them has been consumed too (a partition keeps order). Returns the
    markers' order ids."""
    markers = []
    for topic in AUDITED:
        for partition in sorted(await producer.partitions_for(topic)):
            marker = uuid4()
            (message,) = [m for t, m in order_story(marker) if t == topic][-1:]
            value = message.model_dump_json().encode()
            await producer.send_and_wait(
                topic, value, key=str(marker).encode(), partition=partition
            )
            markers.append(marker)
    return markers


async def wait_for_markers(client: httpx.AsyncClient, markers: list[UUID]) -> None:
    async def unseen() -> list[UUID]:
        return [m for m in markers if not await timeline(client, m)]

    await wait_until(unseen, lambda left: not left, within=60, what="every partition's marker")


# --- once per message, and redelivery --------------------------------------------------


async def test_every_message_is_audited_once_and_redelivery_changes_nothing(
    audit_replicas: list[httpx.AsyncClient], producer: AIOKafkaProducer
) -> None:
    stories = {order_id: order_story(order_id) for order_id in (uuid4() for _ in range(12))}
    for order_id, story in stories.items():
        await publish_all(producer, order_id, story)

    for order_id, story in stories.items():
        entries = await wait_until(
            partial(timeline, audit_replicas[0], order_id),
            lambda items: len(items) >= STORY_LENGTH,
            within=60,
            what="an entry per message",
        )
        assert Counter(e["event_id"] for e in entries) == audit_ids(story)
        changes = [e["after"]["status"] for e in entries if e["action"] == "order.status_changed"]
        assert changes == [s.value for s in LIFECYCLE]
        (rejected,) = [e for e in entries if e["action"] == "order.command_rejected"]
        assert (rejected["actor"], rejected["reason"]) == ("shop", "cannot skip")
        assert (rejected["before"], rejected["after"]) == (
            {"status": "ready"},
            {"status": "delivered"},
        )

    # Every message again; and each refusal announced again under a new event id, as the
    # order service does for a retried HTTP request with the same Idempotency-Key.
    for order_id, story in stories.items():
        await publish_all(producer, order_id, story)
        (first_refusal,) = [m for _, m in story if isinstance(m, CommandRejected)]
        again = refusal(order_id, first_refusal.command_id)
        await produce(producer, ORDERS_COMMAND_RESULTS, order_id, again)
    markers = await mark_every_partition(producer)
    await wait_for_markers(audit_replicas[1], markers)

    for order_id, story in stories.items():
        entries = await timeline(audit_replicas[1], order_id)
        assert Counter(e["event_id"] for e in entries) == audit_ids(story)
    verified = (await audit_replicas[1].get("/audit/verify")).json()
    assert verified["ok"] is True, verified
    assert "first_broken" not in verified


async def test_the_list_api_filters_and_pages(
    audit_replicas: list[httpx.AsyncClient], producer: AIOKafkaProducer
) -> None:
    client = audit_replicas[0]
    order_id = uuid4()
    story = order_story(order_id)
    await publish_all(producer, order_id, story)
    await wait_until(
        lambda: timeline(client, order_id),
        lambda items: len(items) == len(story),
        within=60,
        what="the story",
    )

    seen: list[str] = []
    params: dict[str, Any] = {
        "entity_id": str(order_id),
        "action": "order.status_changed",
        "limit": 2,
    }
    while True:
        page = (await client.get("/audit", params=params)).json()
        assert set(page["items"][0]) >= {
            "event_id",
            "action",
            "actor",
            "entity_type",
            "entity_id",
            "occurred_at",
            "recorded_at",
            "before",
            "after",
            "reason",
            "correlation_id",
            "source",
            "hash",
            "prev_hash",
        }
        seen += [item["after"]["status"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [s.value for s in reversed(LIFECYCLE)]  # newest first

    by_actor = await client.get("/audit", params={"entity_id": str(order_id), "actor": "shop"})
    assert [i["action"] for i in by_actor.json()["items"]] == ["order.command_rejected"]
    future = (await client.get("/audit", params={"since": "2999-01-01T00:00:00Z"})).json()
    assert future == {"items": [], "next_cursor": None}

    first = (await client.get(f"/audit/orders/{order_id}/timeline", params={"limit": 4})).json()
    rest = (
        await client.get(
            f"/audit/orders/{order_id}/timeline", params={"cursor": first["next_cursor"]}
        )
    ).json()
    oldest_first = first["items"] + rest["items"]
    # Oldest first within orders.events; the three topics are consumed side by side.
    order_actions = [
        i["action"]
        for i in oldest_first
        if i["action"] in ("order.created", "order.status_changed")
    ]
    assert order_actions[:2] == ["order.created", "order.status_changed"]
    assert len(oldest_first) == len(story)
    assert rest["next_cursor"] is None

    for bad in ({"cursor": "not-a-cursor"}, {"since": "2026-01-01T00:00:00"}, {"limit": 0}):
        refused = await client.get("/audit", params=bad)
        assert refused.status_code == 422, bad
        assert set(refused.json()["error"]) == {"code", "message", "details"}


# --- poison -----------------------------------------------------------------------------


def _unstorable() -> bytes:
    change = OrderStatusChanged(
        order_id=uuid4(),
        from_status=OrderStatus.PENDING,
        to_status=OrderStatus.CONFIRMED,
        version=2,
        actor=ADMIN,
        customer=CUSTOMER,
        reason="nul \x00 in text",
    )
    return change.model_dump_json().encode()


JSON_HEADER = [("content-type", b"application/json")]


@pytest.mark.parametrize(
    ("poison", "headers", "reason"),
    [
        (b"not json", None, "invalid message"),
        (b"not json", JSON_HEADER, "invalid message"),
        (b"\xff\xfe binary", None, "invalid message"),
        (b'{"type": "OrderTeleported"}', None, "invalid message"),
        (b'{"type": "OrderStatusChanged", "version": -1}', None, "invalid message"),
        (_unstorable(), None, "cannot be stored"),
    ],
    ids=["not-json", "not-json-said-json", "binary", "unknown-type", "schema-invalid", "nul"],
)
async def test_poison_is_dead_lettered_with_its_reason_and_auditing_carries_on(
    audit_replicas: list[httpx.AsyncClient],
    producer: AIOKafkaProducer,
    dead_letters: AIOKafkaConsumer,
    poison: bytes,
    headers: list[tuple[str, bytes]] | None,
    reason: str,
) -> None:
    key = uuid4()
    await produce(producer, ORDERS_EVENTS, key, poison, headers)
    await produce(producer, ORDERS_EVENTS, key, created(key))

    entries = await wait_until(
        lambda: timeline(audit_replicas[0], key),
        lambda items: len(items) == 1,
        within=60,
        what="the valid message after the poison",
    )
    assert entries[0]["action"] == "order.created"

    letters: list[dict[str, Any]] = []

    async def read_letters() -> list[dict[str, Any]]:
        for batch in (await dead_letters.getmany(timeout_ms=200)).values():
            letters.extend(json.loads(r.value) for r in batch if r.key == str(key).encode())
        return letters

    await wait_until(read_letters, bool, within=30, what="the dead letter")
    (letter,) = [letter for letter in letters if letter["consumer_group"] == "audit"]
    assert letter["reason"].startswith(reason), letter
    assert letter["source_topic"] == ORDERS_EVENTS
    assert letter["payload"] == poison.decode("utf-8", errors="replace")


async def test_a_message_with_a_binary_header_is_still_audited(
    audit_replicas: list[httpx.AsyncClient], producer: AIOKafkaProducer
) -> None:
    key = uuid4()
    await produce(producer, ORDERS_EVENTS, key, created(key), headers=[("trace", b"\xff\x00")])

    entries = await wait_until(
        lambda: timeline(audit_replicas[0], key),
        lambda items: len(items) == 1,
        within=60,
        what="the message with a binary header",
    )
    assert entries[0]["action"] == "order.created"


# --- Kafka down -------------------------------------------------------------------------


async def test_the_api_serves_while_kafka_is_down_and_readiness_says_why(
    audit_url: str, token_issuer: TokenIssuer
) -> None:
    settings = Settings(
        database_url=audit_url,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        retry_seconds=0.2,
        order_service_url=token_issuer.url,
    )
    app = build_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://a",
            headers=token_issuer.as_viewer(),
        ) as client,
    ):
        assert (await client.get("/health/live")).status_code == 200
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert ready.json()["error"]["details"] == {"dependency": "kafka"}
        assert (await client.get("/audit")).status_code == 200
        assert (await client.get("/audit/verify")).json()["ok"] is True


# --- who may read ----------------------------------------------------------------------


async def test_reading_needs_a_valid_token_of_the_order_service(
    audit_replicas: list[httpx.AsyncClient], token_issuer: TokenIssuer
) -> None:
    paths = ["/audit", f"/audit/orders/{uuid4()}/timeline", "/audit/verify"]
    await check_read_api_auth(audit_replicas[0], token_issuer, paths)
    assert (await get_without_token(audit_replicas[0], "/health/live")).status_code == 200


async def test_a_valid_answer_is_cached_for_the_configured_time(
    audit_replicas: list[httpx.AsyncClient], token_issuer: TokenIssuer
) -> None:
    await check_token_cache(audit_replicas[1], token_issuer, "/audit/verify")


async def test_with_the_order_service_unreachable_reading_is_503_not_500(audit_url: str) -> None:
    # Kafka unreachable too: this replica has no consumer to start, only its read API.
    settings = Settings(
        database_url=audit_url,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        order_service_url=f"http://127.0.0.1:{free_port()}",
    )
    app = build_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a") as client,
    ):
        for path in ("/audit", "/audit/verify", f"/audit/orders/{uuid4()}/timeline"):
            await check_unreachable_order_service(client, path)


# --- append-only and tamper-evident ----------------------------------------------------


async def _record_stories(url: str, count: int) -> list[AuditedMessage]:
    messages = [m for _ in range(count) for _, m in order_story(uuid4())]
    engine = build_engine(Settings(database_url=url))
    try:
        recorded = await audit_service.record(UnitOfWorkFactory(engine), messages)
    finally:
        await engine.dispose()
    assert (recorded.added, recorded.refused) == (len(messages), {})
    return messages


async def _verify_cli(url: str) -> tuple[int, dict[str, Any]]:
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "audit", "verify"],
        env={**os.environ, "AUDIT_DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    report: dict[str, Any] = json.loads(cli.stdout)
    return cli.returncode, report


async def test_the_database_refuses_update_delete_and_truncate(
    own_audit_database: infra.TestDatabases,
) -> None:
    messages = await _record_stories(own_audit_database.urls["audit"], 1)
    victim = str(messages[2].event_id)
    statements = [
        ("UPDATE audit_log SET actor = 'mallory' WHERE event_id = $1", victim),
        ("DELETE FROM audit_log WHERE event_id = $1", victim),
        ("TRUNCATE audit_log",),
    ]

    connection = await asyncpg.connect(own_audit_database.dsn("audit"))
    try:
        # Even the owner (this admin is a member of it) holds no privilege to change entries...
        for statement in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await connection.execute(*statement)
        # ... and granting it back is not enough: the trigger still refuses.
        await connection.execute("GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO CURRENT_USER")
        for statement in statements:
            with pytest.raises(asyncpg.PostgresError, match="append-only"):
                await connection.execute(*statement)
        assert await connection.fetchval("SELECT count(*) FROM audit_log") == len(messages)
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("tampering", "problem"),
    [
        ("UPDATE audit_log SET actor = 'mallory' WHERE id = $1", "altered"),
        ('UPDATE audit_log SET after = \'{"status": "cancelled"}\' WHERE id = $1', "altered"),
        ("DELETE FROM audit_log WHERE id = $1", "prev_hash"),
    ],
    ids=["actor-changed", "after-changed", "entry-removed"],
)
async def test_verify_names_the_entry_changed_with_the_trigger_disabled(
    own_audit_database: infra.TestDatabases, tampering: str, problem: str
) -> None:
    url = own_audit_database.urls["audit"]
    await _record_stories(url, 3)
    connection = await asyncpg.connect(own_audit_database.dsn("audit"))
    try:
        ids = [r["id"] for r in await connection.fetch("SELECT id FROM audit_log ORDER BY id")]
        victim = ids[7]
        # What the table's owner could do: take the privilege back, switch the guard off.
        await connection.execute("GRANT UPDATE, DELETE ON audit_log TO CURRENT_USER")
        await connection.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await connection.execute(tampering, victim)
        await connection.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        named = victim if problem == "altered" else ids[8]  # removal breaks the next link
        named_event = await connection.fetchval(
            "SELECT event_id::text FROM audit_log WHERE id = $1", named
        )
    finally:
        await connection.close()

    engine = build_engine(Settings(database_url=url))
    try:
        report = await audit_service.verify(UnitOfWorkFactory(engine))
    finally:
        await engine.dispose()
    assert not report.ok
    assert report.checked == 7
    assert report.first_broken is not None
    assert (report.first_broken["id"], report.first_broken["event_id"]) == (named, named_event)
    assert problem in report.first_broken["problem"]

    returncode, printed = await _verify_cli(url)
    assert returncode == 1
    assert printed == report.as_dict()


async def test_the_cli_reports_an_intact_chain(own_audit_database: infra.TestDatabases) -> None:
    messages = await _record_stories(own_audit_database.urls["audit"], 2)

    returncode, printed = await _verify_cli(own_audit_database.urls["audit"])

    assert returncode == 0
    assert (printed["ok"], printed["checked"]) == (True, len(messages))
    assert "first_broken" not in printed


@pytest.mark.parametrize("command", [("audit", "verify"), ("orderctl", "audit", "verify")])
async def test_the_cli_says_nothing_was_checked_when_the_check_cannot_run(
    command: tuple[str, ...],
) -> None:
    unmigrated = infra.create_test_databases("audit")  # no table to read the chain from
    try:
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", *command],
            env={**os.environ, "AUDIT_DATABASE_URL": unmigrated.urls["audit"]},
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        infra.drop_test_databases(unmigrated)
    assert cli.returncode == 2, cli.stderr  # not 1: no broken link was found
    assert cli.stdout == ""
    assert "nothing was checked" in cli.stderr


# --- two replicas as processes ---------------------------------------------------------


async def group_assignments(bootstrap: str, group: str) -> dict[str, int]:
    """Member id → how many partitions the consumer group gave it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (described,) = response.groups
    members = described[5]
    return {
        member[0]: len(ConsumerProtocolMemberAssignment.decode(member[4]).partitions())
        for member in members
        if member[4]
    }


async def test_two_replica_processes_on_one_group_keep_one_valid_chain_even_if_one_dies(
    kafka_bootstrap: str,
    own_audit_database: infra.TestDatabases,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    url = own_audit_database.urls["audit"]
    database = own_audit_database.services["audit"]
    group = f"audit-replicas-{uuid4().hex[:8]}"
    replicas: list[Process] = []
    for number in (1, 2):
        port = free_port()
        env = service_env(
            "audit",
            database=database,
            kafka_bootstrap_servers=kafka_bootstrap,
            http_port=port,
            extra={"AUDIT_CONSUMER_GROUP": group, "AUDIT_BATCH_SIZE": "20"},
        )
        replicas.append(service_process("audit", env, port, tmp_path, name=f"audit-{number}"))
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start)
        await wait_until(
            lambda: group_assignments(kafka_bootstrap, group),
            lambda members: len(members) == 2 and all(members.values()),
            within=60,
            what="both replicas holding partitions",
        )

        orders = [uuid4() for _ in range(60)]

        async def publish_stories(chosen: list[UUID]) -> Counter[str]:
            stories = {order_id: order_story(order_id) for order_id in chosen}
            await asyncio.gather(*(publish_all(producer, o, s) for o, s in stories.items()))
            return sum((audit_ids(story) for story in stories.values()), Counter[str]())

        async def recorded(wanted: Counter[str]) -> Counter[str]:
            connection = await asyncpg.connect(own_audit_database.dsn("audit"))
            try:
                rows = await connection.fetch(
                    "SELECT event_id::text FROM audit_log WHERE event_id::text = ANY($1)",
                    list(wanted),
                )
            finally:
                await connection.close()
            return Counter(row["event_id"] for row in rows)

        # Both replicas appending at once (the keys spread over every partition)...
        both = await publish_stories(orders[:30])
        await wait_until(
            lambda: recorded(both), lambda found: found == both, within=60, what="first half"
        )
        # ... then one of them dies mid-stream, without a goodbye to the group.
        in_flight = asyncio.create_task(publish_stories(orders[30:]))
        await asyncio.to_thread(replicas[0].kill)
        rest = await in_flight
        await wait_until(
            lambda: recorded(rest), lambda found: found == rest, within=120, what="second half"
        )
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)

    returncode, printed = await _verify_cli(url)
    assert returncode == 0, printed
    assert printed["checked"] == await entry_count(own_audit_database.dsn("audit"))


def test_the_openapi_document_declares_the_bearer_scheme_on_every_read() -> None:
    check_openapi(
        build_app(Settings()).openapi(),
        {"/audit", "/audit/verify", "/audit/orders/{order_id}/timeline"},
    )
