"""The notifier's and the audit's pools (`pgstatements.ping_when_idle`) test a connection only
after it sat idle: one that died meanwhile (a database restart) is replaced unseen, while one in
steady use is not pinged and, had it died, fails its first use and is then replaced."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import infra
from pgstatements import ping_when_idle
from tests.integration.conftest import backend_pid, terminated


@contextlib.asynccontextmanager
async def pool_with_a_dead_connection(
    url: str, idle_seconds: float
) -> AsyncIterator[tuple[AsyncEngine, int]]:
    """A one-connection pool whose connection the server ended after its first use; the pool
    and that connection's backend pid."""
    engine = create_async_engine(url, pool_size=1, max_overflow=0)
    ping_when_idle(engine, idle_seconds=idle_seconds)
    try:
        dead = await backend_pid(engine)
        await terminated(url, dead)
        yield engine, dead
    finally:
        await engine.dispose()


async def test_a_connection_that_died_while_idle_is_replaced_unseen(
    databases: infra.TestDatabases,
) -> None:
    url = databases.urls["notifier"]
    async with pool_with_a_dead_connection(url, idle_seconds=0) as (engine, dead):
        assert await backend_pid(engine) != dead


async def test_a_connection_in_steady_use_is_not_pinged_so_its_death_shows_once(
    databases: infra.TestDatabases,
) -> None:
    url = databases.urls["notifier"]
    async with pool_with_a_dead_connection(url, idle_seconds=3600) as (
        engine,
        dead,
    ):
        with pytest.raises(DBAPIError):
            await backend_pid(engine)
        assert await backend_pid(engine) != dead
