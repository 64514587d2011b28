"""The one place a transaction is opened: commit when the block succeeds, roll back if not."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from audit.adapters.repository import AuditRepository

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
        self._connection = await self._engine.connect()
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
        finally:
            await self._connection.close()
            self._connection = None


class UnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine)
