"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises.

A unit of work takes a connection from SQLAlchemy's pool and runs its statements, and its
transaction, on that connection's asyncpg driver (see `pgstatements`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from notifier.adapters.repository import CommunicationRepository, OptOutRepository, Outbox
from pgstatements import Checkout, sqlstate, unavailable


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


def _refused_content(error: BaseException | None) -> bool:
    return sqlstate(error).startswith("22")


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


class UnitOfWork:
    communications: CommunicationRepository
    opt_outs: OptOutRepository
    outbox: Outbox

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self._engine = engine
        self._on_outbox_commit = on_outbox_commit
        self._checkout: Checkout | None = None

    async def __aenter__(self) -> UnitOfWork:
        try:
            checkout = self._checkout = await Checkout.take(self._engine)
        except PoolTimeout as error:
            raise DatabaseBusy(str(error).splitlines()[0]) from error
        except Exception as error:
            if unavailable(error):
                raise DatabaseUnavailable(str(error).splitlines()[0]) from error
            raise
        try:
            await checkout.begin()
        except BaseException as error:
            lost = checkout.lost(error)
            await self._release(failed=True)
            _raise_classified(error, lost=lost)
            raise
        self.communications = CommunicationRepository(checkout.sql)
        self.opt_outs = OptOutRepository(checkout.sql)
        self.outbox = Outbox(checkout.sql)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout = self._checkout
        assert checkout is not None
        # Cancelled mid-statement, the driver may still await its answer: the connection is
        # closed rather than reused.
        failed = exc is not None and not isinstance(exc, Exception)
        try:
            if not failed and exc_type is None:
                await self.outbox.flush()
                await checkout.commit()
                if self.outbox.written:
                    self._on_outbox_commit()
            elif not failed:
                await checkout.rollback()
        except Exception as error:  # writing the outbox, committing, or rolling back
            failed = True
            if exc is None and not (_refused_content(error) or checkout.lost(error)):
                raise
            exc = exc or error
        finally:
            lost = checkout.lost(exc)
            await self._release(failed=failed or lost)
        _raise_classified(exc, lost=lost)

    async def _release(self, *, failed: bool) -> None:
        assert self._checkout is not None
        try:
            await self._checkout.release(failed=failed)
        finally:
            self._checkout = None


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine. `on_outbox_commit`
    runs after each commit that wrote outbox rows (the relay's wake-up call)."""

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.on_outbox_commit = on_outbox_commit

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine, self.on_outbox_commit)
