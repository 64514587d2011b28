"""The services' units of work run their statements on the pooled connection's asyncpg driver
(pgstatements): a connection that died, or that was left mid-statement by a cancelled caller,
is closed instead of going back to the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import audit.app
import audit.config
import notifier.app
import notifier.config
import order.app
import order.config
from audit.adapters import unit_of_work as audit_uow
from audit.adapters.repository import CHAIN_LOCK_KEY
from contracts import Channel
from devstack import infra
from devstack.waiting import wait_until
from notifier.adapters import unit_of_work as notifier_uow
from order.adapters import unit_of_work as order_uow
from pgstatements import DatabaseUnavailable
from tests.integration.conftest import backend_pid, terminated


@dataclass(frozen=True)
class Service:
    """How to open one service's unit of work on an engine, and a read it runs."""

    name: str
    migrate: Callable[[Any], None]  # given the service's settings
    settings: Callable[..., Any]
    blocking: str  # a statement that, held in a transaction, makes `read` wait
    unit_of_work: Callable[[AsyncEngine], AbstractAsyncContextManager[Any]]
    read: Callable[[Any], Awaitable[object]]

    def migrate_on(self, databases: infra.TestDatabases) -> None:
        self.migrate(
            self.settings(
                database_url=databases.urls[self.name],
                migration_database_url=databases.migration_urls[self.name],
            )
        )


def _order(transaction: bool) -> Service:
    return Service(
        name="order",
        migrate=order.app.migrate,
        settings=order.config.Settings,
        blocking="LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
        unit_of_work=lambda engine: order_uow.UnitOfWork(engine, transaction=transaction),
        read=lambda uow: uow.orders.get(uuid4()),
    )


NOTIFIER = Service(
    name="notifier",
    migrate=notifier.app.migrate,
    settings=notifier.config.Settings,
    blocking="LOCK TABLE opt_outs IN ACCESS EXCLUSIVE MODE",
    unit_of_work=lambda engine: notifier_uow.UnitOfWork(engine, on_outbox_commit=lambda: None),
    read=lambda uow: uow.opt_outs.opted_out(Channel.EMAIL, ["someone@example.com"]),
)
AUDIT = Service(
    name="audit",
    migrate=audit.app.migrate,
    settings=audit.config.Settings,
    # The audit's role may not lock its append-only table; appenders wait on the chain's lock.
    blocking=f"SELECT pg_advisory_xact_lock({CHAIN_LOCK_KEY})",
    unit_of_work=audit_uow.UnitOfWork,
    read=lambda uow: uow.audit.lock_tail(),
)
SERVICES = [_order(transaction=True), _order(transaction=False), NOTIFIER, AUDIT]
IDS = ["order-transaction", "order-autocommit", "notifier", "audit"]


@pytest.fixture(params=SERVICES, ids=IDS)
def service(request: pytest.FixtureRequest) -> Service:
    chosen: Service = request.param
    return chosen


@pytest.fixture
async def one_connection(
    service: Service, databases: infra.TestDatabases
) -> AsyncIterator[AsyncEngine]:
    """The service's database, migrated, behind a pool of one connection."""
    await asyncio.to_thread(service.migrate_on, databases)
    engine = create_async_engine(databases.urls[service.name], pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


async def test_a_connection_the_server_ended_fails_one_unit_of_work_and_is_replaced(
    service: Service, databases: infra.TestDatabases, one_connection: AsyncEngine
) -> None:
    dead = await backend_pid(one_connection)
    await terminated(databases.urls[service.name], dead)

    with pytest.raises(DatabaseUnavailable):
        async with service.unit_of_work(one_connection) as uow:
            await service.read(uow)

    async with service.unit_of_work(one_connection) as uow:
        await service.read(uow)
    assert await backend_pid(one_connection) != dead


async def test_a_unit_of_work_cancelled_mid_statement_does_not_give_back_its_connection(
    service: Service, databases: infra.TestDatabases, one_connection: AsyncEngine
) -> None:
    used = await backend_pid(one_connection)
    locker = await asyncpg.connect(databases.dsn(service.name))
    try:
        locking = locker.transaction()
        await locking.start()
        await locker.execute(service.blocking)

        async def read() -> None:
            async with service.unit_of_work(one_connection) as uow:
                await service.read(uow)

        reading = asyncio.create_task(read())
        await wait_until(
            lambda: locker.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", used
            ),
            lambda waiting: waiting == 1,
            within=10,
            what="the read waiting for the lock",
        )
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        await locking.rollback()

        async with service.unit_of_work(one_connection) as uow:
            await service.read(uow)
        assert await backend_pid(one_connection) != used
    finally:
        await locker.close()
