"""Fixtures for testing one service at a time against the session's real Kafka and
PostgreSQL (the broker and databases come from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.app import build_app as build_audit_app
from audit.app import migrate as migrate_audit
from audit.config import Settings as AuditSettings
from audit.entrypoints.consumer import AUDITED_TOPICS
from contracts import ORDERS_EVENTS, Message
from devstack import infra
from devstack.processes import free_port, migrate, run_checked, service_env, service_process
from devstack.waiting import wait_until
from notifier.app import build_app as build_notifier_app
from notifier.app import migrate as migrate_notifier
from notifier.config import Settings as NotifierSettings
from order import service as order_service
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.app import build_app, build_engine
from order.app import migrate as migrate_order
from order.config import Settings as OrderSettings
from order.domain.auth import Role

# The helper modules' asserts explain their failures as a test's do (pytest rewrites only test
# modules and conftest files by itself).
pytest.register_assert_rewrite(
    "tests.integration.notifier_support", "tests.integration.read_api_auth"
)


@dataclass
class OrderService:
    client: httpx.AsyncClient
    admin_token: str
    viewer_token: str

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def as_viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.viewer_token}"}


@contextlib.asynccontextmanager
async def serving(
    app: FastAPI, *, headers: Mapping[str, str] | None = None, ready: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """`app` in this process, its lifespan running, and a client on it sending `headers`;
    with `ready`, once /health/ready says so."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://service", headers=headers
        ) as client,
    ):
        if ready:
            await wait_until(
                partial(client.get, "/health/ready"),
                lambda response: response.status_code == 200,
                within=60,
                what=f"{app.title} to be ready",
            )
        yield client


@contextlib.asynccontextmanager
async def running_order_service(settings: OrderSettings) -> AsyncIterator[OrderService]:
    """The order service in this process (HTTP API and outbox relay), migrated, with an admin
    and a viewer token, its lifespan running."""
    await asyncio.to_thread(migrate_order, settings)  # alembic runs its own event loop
    engine = build_engine(settings)
    uow = UnitOfWorkFactory(engine)
    admin = await order_service.issue_token(uow, "it-admin", Role.ADMIN)
    viewer = await order_service.issue_token(uow, "it-viewer", Role.VIEWER)
    await engine.dispose()

    async with serving(build_app(settings)) as client:
        yield OrderService(client, admin, viewer)


MESSAGE_ID_DOMAIN = "it.backbone.local"


def notifier_settings(
    databases: infra.TestDatabases, kafka_bootstrap: str, smtp_port: int, **overrides: Any
) -> NotifierSettings:
    """The notifier on `databases`, sending to the SMTP server at `smtp_port`, in a consumer
    group of its own, with short pauses and retries, and `overrides`."""
    fields: dict[str, Any] = {
        "database_url": databases.urls["notifier"],
        "migration_database_url": databases.migration_urls["notifier"],
        "kafka_bootstrap_servers": kafka_bootstrap,
        "consumer_group": f"notifier-it-{uuid4().hex[:8]}",
        "smtp_port": smtp_port,
        "smtp_timeout_seconds": 2.0,
        "lease_seconds": 10.0,
        "message_id_domain": MESSAGE_ID_DOMAIN,
        "dispatch_poll_interval_seconds": 0.2,
        "outbox_poll_interval_seconds": 0.2,
        "backoff_base_seconds": 0.2,
        "backoff_max_seconds": 1.0,
        "max_attempts": 100,
        "retry_seconds": 0.5,
        **overrides,
    }
    return NotifierSettings(**fields)


@contextlib.asynccontextmanager
async def running_notifier(
    settings: NotifierSettings, headers: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The notifier in this process (consumer, dispatcher, relay, read API) on its settings'
    database, migrated, consuming only what is published from now on; ready. Its client
    sends `headers`."""
    await consumer_group_at_end(settings.kafka_bootstrap_servers, settings.consumer_group)
    await asyncio.to_thread(migrate_notifier, settings)  # alembic runs its own event loop
    app = build_notifier_app(settings)
    async with serving(app, headers=headers, ready=True) as client:
        yield client, app


def audit_settings(
    databases: infra.TestDatabases, kafka_bootstrap: str, **overrides: Any
) -> AuditSettings:
    """The audit service on `databases`, in a consumer group of its own, and `overrides`."""
    fields: dict[str, Any] = {
        "database_url": databases.urls["audit"],
        "migration_database_url": databases.migration_urls["audit"],
        "kafka_bootstrap_servers": kafka_bootstrap,
        "consumer_group": f"audit-it-{uuid4().hex[:8]}",
        **overrides,
    }
    return AuditSettings(**fields)


@contextlib.asynccontextmanager
async def running_audit(
    settings: AuditSettings, headers: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The audit service in this process (consumer, read API) on its settings' database,
    migrated, consuming only what is published from now on; ready. Its client sends
    `headers`."""
    for topic in AUDITED_TOPICS:
        await consumer_group_at_end(
            settings.kafka_bootstrap_servers, settings.consumer_group, topic
        )
    await asyncio.to_thread(migrate_audit, settings)
    app = build_audit_app(settings)
    async with serving(app, headers=headers, ready=True) as client:
        yield client, app


def order_settings(
    databases: infra.TestDatabases, kafka_bootstrap: str, **overrides: Any
) -> OrderSettings:
    """The order service on `databases`, its relay polling every 0.5 s, and `overrides`."""
    return OrderSettings(
        database_url=databases.urls["order"],
        migration_database_url=databases.migration_urls["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        **{"relay_poll_interval_seconds": 0.5, **overrides},
    )


@pytest.fixture(scope="session")
async def order_service_app(
    kafka_bootstrap: str, databases: infra.TestDatabases
) -> AsyncIterator[OrderService]:
    async with running_order_service(order_settings(databases, kafka_bootstrap)) as service:
        yield service


@dataclass
class TokenIssuer:
    """The order service as a real process, on databases of its own: it issues the tokens
    that the notifier and audit read APIs check with its GET /auth/whoami."""

    url: str
    env: dict[str, str]
    admin_token: str
    viewer_token: str

    def issue(self, name: str, role: str = "viewer") -> str:
        command = ["token", "create", "--name", name, "--role", role]
        created = run_checked([sys.executable, "-m", "order", *command], self.env, "token create")
        return created.strip().splitlines()[-1]

    async def revoke(self, name: str) -> None:
        # In this process (no interpreter start-up): a test of the verifiers' cache times it.
        engine = build_engine(OrderSettings(database_url=self.env["ORDER_DATABASE_URL"]))
        try:
            assert await order_service.revoke_tokens(UnitOfWorkFactory(engine), name) >= 1
        finally:
            await engine.dispose()

    def as_viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.viewer_token}"}


@pytest.fixture(scope="session")
def token_issuer(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenIssuer]:
    created = infra.create_test_databases("issuer")
    port = free_port()
    env = service_env(
        "order",
        database=created.services["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
    )
    process = service_process("order", env, port, tmp_path_factory.mktemp("issuer"))
    try:
        migrate("order", env)
        issuer = TokenIssuer(f"http://127.0.0.1:{port}", env, "", "")
        issuer.admin_token = issuer.issue("it-reader-admin", "admin")
        issuer.viewer_token = issuer.issue("it-reader-viewer", "viewer")
        process.start()
        yield issuer
    finally:
        process.stop()
        infra.drop_test_databases(created)


class TopicReader:
    """Reads a topic from the beginning, outside any consumer group, keeping every record."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.records: list[ConsumerRecord[bytes, bytes]] = []

    async def _poll(self) -> list[ConsumerRecord[bytes, bytes]]:
        for batch in (await self._consumer.getmany(timeout_ms=200)).values():
            self.records.extend(batch)
        return self.records

    async def wait_for_keys(self, keys: set[str], within: float = 60) -> None:
        """Until a record with each of `keys` has arrived."""
        wanted = {key.encode() for key in keys}
        await wait_until(
            self._poll,
            lambda records: wanted <= {r.key for r in records},
            within=within,
            what=f"records for {len(keys)} keys",
        )

    async def values_for(self, key: str, count: int, within: float = 30) -> list[dict[str, Any]]:
        """The JSON values of records with `key`, once at least `count` have arrived."""

        def matching() -> list[dict[str, Any]]:
            return [json.loads(r.value) for r in self.records if r.key == key.encode()]

        await wait_until(
            self._poll, lambda _: len(matching()) >= count, within=within, what=f"{count} x {key}"
        )
        return matching()

    async def all_values(self, settle: float = 1.0) -> list[bytes]:
        """Everything on the topic, after `settle` seconds without new records."""
        seen = -1
        while seen != len(self.records):
            seen = len(self.records)
            for batch in (await self._consumer.getmany(timeout_ms=int(settle * 1000))).values():
                self.records.extend(batch)
        return [r.value for r in self.records]


async def values_on_topic(bootstrap_servers: str, topic: str, key: str) -> list[dict[str, Any]]:
    """The JSON values of every record with `key` on `topic`, read once from the beginning to
    the current end by a fresh consumer: an exact count (a subscribed reader may be reset to
    the beginning by a metadata change and see records again)."""
    partitions = await infra.partitions_of(bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        values: list[dict[str, Any]] = []
        reading = {tp for tp in partitions if ends[tp] > 0}
        while reading:
            for tp, records in (await consumer.getmany(*reading, timeout_ms=500)).items():
                values += [json.loads(r.value) for r in records if r.key == key.encode()]
                if records and records[-1].offset >= ends[tp] - 1:
                    reading.discard(tp)
        return values
    finally:
        await consumer.stop()


@pytest.fixture
async def read_topic(
    kafka_bootstrap: str,
) -> AsyncIterator[Callable[[str], Awaitable[TopicReader]]]:
    consumers: list[AIOKafkaConsumer] = []

    async def open_reader(topic: str) -> TopicReader:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        consumers.append(consumer)
        return TopicReader(consumer)

    yield open_reader
    for consumer in consumers:
        await consumer.stop()


@pytest.fixture
async def order_events(read_topic: Callable[[str], Awaitable[TopicReader]]) -> TopicReader:
    return await read_topic("orders.events")


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain producer, for publishing what upstream systems or other services would."""
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    await client.start()
    yield client
    await client.stop()


async def produce(
    producer: AIOKafkaProducer,
    topic: str,
    key: UUID,
    message: Message | bytes,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """`message` (a contract, or bytes as they are) on `topic` under `key`, acknowledged."""
    value = message if isinstance(message, bytes) else message.model_dump_json().encode()
    await producer.send_and_wait(topic, value, key=str(key).encode(), headers=headers)


async def consumer_group_at_end(
    kafka_bootstrap: str, group: str, topic: str = ORDERS_EVENTS
) -> str:
    """`group` positioned at the end of `topic` (orders.events unless told)."""
    return await infra.commit_group_at_end(kafka_bootstrap, group, topic)


async def commit_one_then_two_back_to_back(
    commit: Callable[[str], Awaitable[None]], batches: list[int]
) -> None:
    """What a relay's linger is tested with: one commit, relayed on its own (the relay is then
    connected and idle), then two back to back, the second right behind the one that wakes
    the relay. `batches` collects the relay's acknowledged counts."""
    await commit("first")
    await wait_until(lambda: sum(batches), lambda n: n == 1, within=30, what="the first")
    await commit("woke it")
    await commit("right behind")
    await wait_until(lambda: sum(batches), lambda n: n == 3, within=30, what="both relayed")


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text("SELECT pg_backend_pid()")))


async def terminated(url: str, pid: int) -> None:
    """End the server side of `pid` as a database restart would, and wait until it is gone."""
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
        await wait_until(
            lambda: connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            ),
            lambda count: count == 0,
            within=10,
            what=f"backend {pid} gone",
        )
    finally:
        await connection.close()
