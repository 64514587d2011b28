"""A connection out of SQLAlchemy's pool, used through its asyncpg driver, and what a unit of
work raises for the database's errors.

SQLAlchemy's execution layer invalidated a connection whose error it recognised as a
disconnect; statements run past it must do that themselves: a connection that failed, or that
a cancelled caller left mid-statement, is closed rather than handed back to the pool."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from pgstatements.statements import Sql


class Unstorable(Exception):
    """The database refused the content itself (SQLSTATE class 22, data exception: a NUL
    character in a text, a number out of range): retrying cannot help, unlike a lost
    connection, so the caller refuses the input (4xx, or a dead letter)."""


class DatabaseUnavailable(Exception):
    """The database could not be reached, or went away mid-transaction (restarting, failing
    over): nothing was committed unless the commit's answer was lost, so the work can be
    retried as a whole; each service makes a repeat harmless (idempotency keys, dedupe keys,
    event ids). Reads answer 503."""


class DatabaseBusy(Exception):
    """Every pooled connection stayed in use for as long as a unit of work may wait for one:
    the service is taking more work than the database answers. Nothing was done; unlike an
    unreachable database, this is not retried, as a retry would only join the queue."""


# Connection exceptions (08), operator intervention (57P: shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "57P")


def _sqlstate(error: BaseException | None) -> str:
    """The SQLSTATE of a database error, '' for any other. SQLAlchemy wraps the driver's
    errors while connecting; statements run on the driver raise asyncpg's own."""
    driver_error = error.orig if isinstance(error, DBAPIError) else error
    return str(getattr(driver_error, "sqlstate", "") or "")


def _unavailable(error: BaseException | None) -> bool:
    """Did `error` come from the database being unreachable or the connection going away?"""
    if isinstance(error, OSError | asyncpg.ConnectionDoesNotExistError):  # refused, reset
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return _sqlstate(error).startswith(_UNAVAILABLE_SQLSTATES)


def _refused_content(error: BaseException | None) -> bool:
    return _sqlstate(error).startswith("22")


def _raise_classified(error: BaseException | None, *, lost: bool) -> None:
    """Raise what the callers act on for a database error (`lost`: the connection or the
    database went away); return for any other."""
    if lost:
        raise DatabaseUnavailable(str(error).splitlines()[0]) from error
    if _refused_content(error):
        raise Unstorable(str(getattr(error, "orig", error)).splitlines()[0]) from error


# A connection in steady use proves itself alive; one that sat idle may have died meanwhile
# (a database restart). pool_pre_ping would test every checkout, three round trips each: at
# a few hundred transactions a second that was a third of all statements.
IDLE_BEFORE_PING_SECONDS = 1.0
_RETURNED_AT = "returned_at"  # in a pooled connection's info


def ping_when_idle(engine: AsyncEngine, idle_seconds: float = IDLE_BEFORE_PING_SECONDS) -> None:
    """Test a pooled connection before use only when it waited in the pool over
    `idle_seconds`; a dead one is replaced unseen (the pool reconnects on DisconnectionError).
    One that died in use fails its unit of work, which its caller retries, and the pool then
    replaces every connection older than the failure."""
    pool = engine.sync_engine.pool

    @event.listens_for(pool, "checkin")
    def returned(_: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def taken(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at <= idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError(f"pooled connection is dead: {error}") from error


class Checkout:
    """One pooled connection, from `take` to `end`, in a transaction once begun."""

    def __init__(self, connection: AsyncConnection, driver: asyncpg.Connection) -> None:
        self._connection = connection
        self._driver = driver
        self._transaction: asyncpg.transaction.Transaction | None = None
        self.sql = Sql(driver)

    @classmethod
    async def take(cls, engine: AsyncEngine) -> Checkout:
        """A connection from the pool: `DatabaseBusy` when none came free in the pool's
        timeout, `DatabaseUnavailable` when the database could not be reached."""
        try:
            connection = await engine.connect()
        except PoolTimeout as error:
            raise DatabaseBusy(str(error).splitlines()[0]) from error
        except Exception as error:
            if _unavailable(error):
                raise DatabaseUnavailable(str(error).splitlines()[0]) from error
            raise
        try:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None  # a checked-out connection has its driver's
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        return cls(connection, driver)

    async def begin(self) -> None:
        """Start a transaction. When that fails, the connection is released and the error
        raised as what it means to the caller (see `_raise_classified`)."""
        try:
            self._transaction = self._driver.transaction()
            await self._transaction.start()
        except BaseException as error:
            lost = self.lost(error)
            await self._release(failed=True)
            _raise_classified(error, lost=lost)
            raise

    async def end(
        self,
        error: BaseException | None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """End the work on this connection: commit when it ended without `error` (after
        `before_commit`), roll back when it raised one; release the connection; then raise
        what the error, or the commit's, means to the caller (see `_raise_classified`)."""
        # Cancelled mid-statement, the driver may still await its answer: the connection is
        # closed rather than reused.
        failed = error is not None and not isinstance(error, Exception)
        try:
            if error is None:
                if before_commit is not None:
                    await before_commit()
                if self._transaction is not None:
                    await self._transaction.commit()
            elif not failed and self._transaction is not None:
                await self._transaction.rollback()
        except Exception as ending_error:  # before the commit, committing or rolling back
            failed = True
            if error is None and not (_refused_content(ending_error) or self.lost(ending_error)):
                raise
            error = error or ending_error
        finally:
            lost = self.lost(error)
            await self._release(failed=failed or lost)
        _raise_classified(error, lost=lost)

    def lost(self, error: BaseException | None) -> bool:
        """Did `error` come from the connection or the database going away?"""
        if error is None:
            return False
        return _unavailable(error) or self._driver.is_closed()

    async def _release(self, *, failed: bool) -> None:
        """Back to the pool, or closed and replaced when it failed: it may be dead, or in a
        transaction or a statement nobody finished."""
        if failed:
            await self._connection.invalidate()
        await self._connection.close()


@contextlib.asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Sql]:
    """Statements in one transaction on a pooled connection, for work outside a unit of work
    (an outbox relay's batch): committed when the block succeeds, rolled back when it raises;
    the database's errors raised as a unit of work's are."""
    checkout = await Checkout.take(engine)
    await checkout.begin()
    try:
        yield checkout.sql
    except BaseException as error:
        await checkout.end(error)
        raise
    await checkout.end(None)
