"""The order service's unit of work runs its statements on the pooled connection's asyncpg
driver: a connection that died, or that was left mid-statement by a cancelled request, is
closed instead of going back to the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import infra
from devstack.waiting import wait_until
from order.adapters.unit_of_work import DatabaseUnavailable, UnitOfWork
from order.app import migrate
from order.config import Settings
from tests.integration.conftest import backend_pid, terminated


@pytest.fixture
async def one_connection(databases: infra.TestDatabases) -> AsyncIterator[AsyncEngine]:
    """The order database, migrated, behind a pool of one connection."""
    settings = Settings(
        database_url=databases.urls["order"],
        migration_database_url=databases.migration_urls["order"],
    )
    await asyncio.to_thread(migrate, settings)
    engine = create_async_engine(databases.urls["order"], pool_size=1, max_overflow=0)
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("transaction", [True, False], ids=["transaction", "autocommit"])
async def test_a_connection_the_server_ended_fails_one_unit_of_work_and_is_replaced(
    databases: infra.TestDatabases, one_connection: AsyncEngine, transaction: bool
) -> None:
    dead = await backend_pid(one_connection)
    await terminated(databases.urls["order"], dead)

    with pytest.raises(DatabaseUnavailable):
        async with UnitOfWork(one_connection, transaction=transaction) as uow:
            await uow.tokens.lookup("any token")

    async with UnitOfWork(one_connection, transaction=transaction) as uow:
        assert await uow.tokens.lookup("any token") is None
    assert await backend_pid(one_connection) != dead


async def test_a_unit_of_work_cancelled_mid_statement_does_not_give_back_its_connection(
    databases: infra.TestDatabases, one_connection: AsyncEngine
) -> None:
    used = await backend_pid(one_connection)
    locker = await asyncpg.connect(databases.dsn("order"))
    try:
        locking = locker.transaction()
        await locking.start()
        await locker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")

        async def read_an_order() -> None:
            async with UnitOfWork(one_connection, transaction=False) as uow:
                await uow.orders.get(uuid4())

        reading = asyncio.create_task(read_an_order())
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

        async with UnitOfWork(one_connection, transaction=False) as uow:
            assert await uow.orders.get(uuid4()) is None
        assert await backend_pid(one_connection) != used
    finally:
        await locker.close()
