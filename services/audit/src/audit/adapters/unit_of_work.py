"""The one place a transaction is opened: commit when the block succeeds, roll back if not."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from audit.adapters.repository import AuditRepository


class DatabaseUnavailable(Exception):
    """The database could not be reached, or went away mid-transaction: nothing was committed
    unless the commit's answer was lost. Consuming retries after a pause (an event already
    audited is not appended again); a read answers 503."""


class DatabaseBusy(Exception):
    """Every pooled connection stayed in use for as long as a unit of work may wait for one;
    nothing was done."""


# Connection exceptions (08), operator intervention (57P: shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "57P")


def _unavailable(error: BaseException | None) -> bool:
    if isinstance(error, OSError):  # refused or reset while connecting
        return True
    if not isinstance(error, DBAPIError):
        return False
    sqlstate = str(getattr(error.orig, "sqlstate", "") or "")
    return error.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


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


class UnitOfWork:
    audit: AuditRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> UnitOfWork:
        try:
            self._connection = await self._engine.connect()
        except PoolTimeout as error:
            raise DatabaseBusy(str(error).splitlines()[0]) from error
        except Exception as error:
            if _unavailable(error):
                raise DatabaseUnavailable(str(error).splitlines()[0]) from error
            raise
        await self._connection.begin()
        self.audit = AuditRepository(self._connection)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._connection is not None
        try:
            if exc_type is None:
                await self._connection.commit()
            else:
                await self._connection.rollback()
        except Exception as error:  # committing or rolling back
            if exc is None and not _unavailable(error):
                raise
            exc = exc or error
        finally:
            await self._connection.close()
            self._connection = None
        if _unavailable(exc):
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc


class UnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine)
