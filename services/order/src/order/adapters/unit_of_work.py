"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from order.adapters.repository import (
    IdempotencyRepository,
    OrderRepository,
    Outbox,
    TokenRepository,
)


class Unstorable(Exception):
    """The database refused the content itself (SQLSTATE class 22, data exception: a NUL
    character in a text, a number out of range): retrying cannot help, unlike a lost
    connection, so the caller refuses the input (4xx, or a dead letter)."""


def _refused_content(error: BaseException | None) -> bool:
    return isinstance(error, DBAPIError) and str(getattr(error.orig, "sqlstate", "")).startswith(
        "22"
    )


class UnitOfWork:
    orders: OrderRepository
    outbox: Outbox
    tokens: TokenRepository
    idempotency: IdempotencyRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> UnitOfWork:
        self._connection = await self._engine.connect()
        await self._connection.begin()
        self.orders = OrderRepository(self._connection)
        self.outbox = Outbox(self._connection)
        self.tokens = TokenRepository(self._connection)
        self.idempotency = IdempotencyRepository(self._connection)
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
        if _refused_content(exc):
            raise Unstorable(str(getattr(exc, "orig", exc)).splitlines()[0]) from exc


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine)
