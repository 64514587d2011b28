"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from notifier.adapters.repository import CommunicationRepository, OptOutRepository, Outbox


class Unstorable(Exception):
    """The database refused the content itself (SQLSTATE class 22, data exception: a NUL
    character in a text, a number out of range): retrying cannot help, unlike a lost
    connection, so the caller refuses the input (4xx, or a dead letter)."""


class DatabaseUnavailable(Exception):
    """The database could not be reached, or went away mid-transaction: nothing was committed
    unless the commit's answer was lost. Consuming and sending retry after a pause (the dedupe
    keys make a repeat harmless); a read answers 503."""


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


def _refused_content(error: BaseException | None) -> bool:
    return isinstance(error, DBAPIError) and str(getattr(error.orig, "sqlstate", "")).startswith(
        "22"
    )


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
    communications: CommunicationRepository
    opt_outs: OptOutRepository
    outbox: Outbox

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self._engine = engine
        self._on_outbox_commit = on_outbox_commit
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
        self.communications = CommunicationRepository(self._connection)
        self.opt_outs = OptOutRepository(self._connection)
        self.outbox = Outbox(self._connection)
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
                await self.outbox.flush()
                await self._connection.commit()
                if self.outbox.written:
                    self._on_outbox_commit()
            else:
                await self._connection.rollback()
        except Exception as error:  # writing the outbox, committing, or rolling back
            if exc is None and not (_refused_content(error) or _unavailable(error)):
                raise
            exc = exc or error
        finally:
            await self._connection.close()
            self._connection = None
        if _refused_content(exc):
            raise Unstorable(str(getattr(exc, "orig", exc)).splitlines()[0]) from exc
        if _unavailable(exc):
            raise DatabaseUnavailable(str(exc).splitlines()[0]) from exc


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine. `on_outbox_commit`
    runs after each commit that wrote outbox rows (the relay's wake-up call)."""

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.on_outbox_commit = on_outbox_commit

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine, self.on_outbox_commit)
