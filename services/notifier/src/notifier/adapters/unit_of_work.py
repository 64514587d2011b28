"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notifier.adapters.repository import CommunicationRepository, Outbox


class UnitOfWork:
    communications: CommunicationRepository
    outbox: Outbox

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self._engine = engine
        self._on_outbox_commit = on_outbox_commit
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> UnitOfWork:
        self._connection = await self._engine.connect()
        await self._connection.begin()
        self.communications = CommunicationRepository(self._connection)
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
                await self._connection.commit()
                if self.outbox.written:
                    self._on_outbox_commit()
            else:
                await self._connection.rollback()
        finally:
            await self._connection.close()
            self._connection = None


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine. `on_outbox_commit`
    runs after each commit that wrote outbox rows (the relay's wake-up call)."""

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.on_outbox_commit = on_outbox_commit

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine, self.on_outbox_commit)
