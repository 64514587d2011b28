"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises. A unit of work for
reads, or for a single writing statement, opens none: each of its statements is atomic on its
own, one round trip instead of three.

A unit of work takes a connection from SQLAlchemy's pool and runs its statements, and its
transaction, on that connection's asyncpg driver (see `pgstatements`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from order.adapters.repository import (
    IdempotencyRepository,
    OrderRepository,
    Outbox,
    TokenRepository,
)
from pgstatements import Checkout, DatabaseBusy, DatabaseUnavailable, Unstorable

# The errors are pgstatements', named here too: a service's callers see one module.
__all__ = [
    "DatabaseBusy",
    "DatabaseUnavailable",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "Unstorable",
]


T = TypeVar("T")


def _backoff(wait_seconds: float) -> AsyncRetrying:
    """Again while the database is unavailable, for up to `wait_seconds`."""
    return AsyncRetrying(
        retry=retry_if_exception_type(DatabaseUnavailable),
        stop=stop_after_delay(wait_seconds),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
        reraise=True,
    )


class UnitOfWork:
    orders: OrderRepository
    outbox: Outbox
    tokens: TokenRepository
    idempotency: IdempotencyRepository

    def __init__(
        self, engine: AsyncEngine, wait_for_database: float = 0.0, *, transaction: bool = True
    ) -> None:
        self._engine = engine
        self._wait_for_database = wait_for_database
        self._transaction = transaction
        self._checkout: Checkout | None = None

    async def __aenter__(self) -> UnitOfWork:
        checkout = self._checkout = await self._connect()
        if self._transaction:
            await checkout.begin()
        self.orders = OrderRepository(checkout.sql)
        self.outbox = Outbox(checkout.sql)
        self.tokens = TokenRepository(checkout.sql)
        self.idempotency = IdempotencyRepository(checkout.sql)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        checkout, self._checkout = self._checkout, None
        assert checkout is not None
        await checkout.end(exc)

    async def _connect(self) -> Checkout:
        """A pooled connection, waiting up to `wait_for_database` seconds while the database
        cannot be reached, e.g. through a restart (while all are in use, as long as the pool's
        timeout). It is not pinged first: a connection that died in the pool fails its first
        statement, and `UnitOfWorkFactory.run` starts over."""
        try:
            return await Checkout.take(self._engine)
        except DatabaseUnavailable:
            if not self._wait_for_database:
                raise
        # Only now the retrying machinery: on every call it cost 5 % of a request's CPU.
        async for attempt in _backoff(self._wait_for_database):
            with attempt:
                return await Checkout.take(self._engine)
        raise AssertionError("tenacity either returns or raises")


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine."""

    def __init__(self, engine: AsyncEngine, wait_for_database: float = 0.0) -> None:
        self.engine = engine
        self.wait_for_database = wait_for_database

    def __call__(self, *, transaction: bool = True) -> UnitOfWork:
        return UnitOfWork(self.engine, self.wait_for_database, transaction=transaction)

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """`work` in one unit of work, run again from the start when the database went away
        mid-way (for up to `wait_for_database` seconds), so a restart delays it instead of
        failing it."""
        return await self._run(work, transaction=True)

    async def read(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """`run` for work that only reads: no transaction, each statement on its own."""
        return await self._run(work, transaction=False)

    async def write_once(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """`run` for work that writes with one statement at most (reads aside): that statement
        is atomic on its own, so no transaction is opened around it."""
        return await self._run(work, transaction=False)

    async def _run(self, work: Callable[[UnitOfWork], Awaitable[T]], *, transaction: bool) -> T:
        try:
            async with self(transaction=transaction) as uow:
                return await work(uow)
        except DatabaseUnavailable:
            if not self.wait_for_database:
                raise
        async for attempt in _backoff(self.wait_for_database):
            with attempt:
                async with self(transaction=transaction) as uow:
                    return await work(uow)
        raise AssertionError("tenacity either returns or raises")
