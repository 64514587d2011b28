"""The notifier's and the audit's pools test a connection only after it sat idle: one that died
meanwhile (a database restart) is replaced unseen, while one in steady use is not pinged and,
had it died, fails its first use and is then replaced."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from audit.adapters import unit_of_work as audit_unit_of_work
from devstack import infra
from notifier.adapters import unit_of_work as notifier_unit_of_work
from tests.integration.conftest import backend_pid, terminated

PingWhenIdle = Callable[..., None]
SERVICES = pytest.mark.parametrize(
    ("service", "ping_when_idle"),
    [
        ("notifier", notifier_unit_of_work.ping_when_idle),
        ("audit", audit_unit_of_work.ping_when_idle),
    ],
)


@contextlib.asynccontextmanager
async def pool_with_a_dead_connection(
    url: str, ping_when_idle: PingWhenIdle, idle_seconds: float
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


@SERVICES
async def test_a_connection_that_died_while_idle_is_replaced_unseen(
    databases: infra.TestDatabases, service: str, ping_when_idle: PingWhenIdle
) -> None:
    url = databases.urls[service]
    async with pool_with_a_dead_connection(url, ping_when_idle, idle_seconds=0) as (engine, dead):
        assert await backend_pid(engine) != dead


@SERVICES
async def test_a_connection_in_steady_use_is_not_pinged_so_its_death_shows_once(
    databases: infra.TestDatabases, service: str, ping_when_idle: PingWhenIdle
) -> None:
    url = databases.urls[service]
    async with pool_with_a_dead_connection(url, ping_when_idle, idle_seconds=3600) as (
        engine,
        dead,
    ):
        with pytest.raises(DBAPIError):
            await backend_pid(engine)
        assert await backend_pid(engine) != dead
