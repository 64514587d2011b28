"""A connection out of SQLAlchemy's pool, used through its asyncpg driver.

SQLAlchemy's execution layer invalidated a connection whose error it recognised as a
disconnect; statements run past it must do that themselves: a connection that failed, or that
a cancelled caller left mid-statement, is closed rather than handed back to the pool."""

from __future__ import annotations

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgstatements.statements import Sql

# Connection exceptions (08), operator intervention (57P: shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "57P")


def sqlstate(error: BaseException | None) -> str:
    """The SQLSTATE of a database error, '' for any other. SQLAlchemy wraps the driver's
    errors while connecting; statements run on the driver raise asyncpg's own."""
    driver_error = error.orig if isinstance(error, DBAPIError) else error
    return str(getattr(driver_error, "sqlstate", "") or "")


def unavailable(error: BaseException | None) -> bool:
    """Did `error` come from the database being unreachable or the connection going away?"""
    if isinstance(error, OSError | asyncpg.ConnectionDoesNotExistError):  # refused, reset
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return sqlstate(error).startswith(_UNAVAILABLE_SQLSTATES)


class Checkout:
    """One pooled connection, from `take` to `release`, in a transaction once begun."""

    def __init__(self, connection: AsyncConnection, driver: asyncpg.Connection) -> None:
        self._connection = connection
        self._driver = driver
        self._transaction: asyncpg.transaction.Transaction | None = None
        self.sql = Sql(driver)

    @classmethod
    async def take(cls, engine: AsyncEngine) -> Checkout:
        """A connection from the pool; the pool's errors (its timeout, a refused connection)
        are raised as they are."""
        connection = await engine.connect()
        try:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None  # a checked-out connection has its driver's
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        return cls(connection, driver)

    async def begin(self) -> None:
        self._transaction = self._driver.transaction()
        await self._transaction.start()

    async def commit(self) -> None:
        if self._transaction is not None:
            await self._transaction.commit()

    async def rollback(self) -> None:
        if self._transaction is not None:
            await self._transaction.rollback()

    def lost(self, error: BaseException | None) -> bool:
        """Did `error` come from the connection or the database going away?"""
        if error is None:
            return False
        return unavailable(error) or self._driver.is_closed()

    async def release(self, *, failed: bool) -> None:
        """Back to the pool, or closed and replaced when it failed: it may be dead, or in a
        transaction or a statement nobody finished."""
        if failed:
            await self._connection.invalidate()
        await self._connection.close()
