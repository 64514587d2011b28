"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises.

A unit of work takes a connection from SQLAlchemy's pool and runs its statements, and its
transaction, on that connection's asyncpg driver (see `pgstatements`)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.adapters.repository import CommunicationRepository, OptOutRepository, Outbox
from pgstatements import (
    Checkout,
    DatabaseBusy,
    DatabaseUnavailable,
    Unstorable,
    raise_classified,
    refused_content,
    unavailable,
)

# The errors are pgstatements', named here too: a service's callers see one module.
__all__ = [
    "DatabaseBusy",
    "DatabaseUnavailable",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "Unstorable",
]


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
            raise_classified(error, lost=lost)
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
            if exc is None and not (refused_content(error) or checkout.lost(error)):
                raise
            exc = exc or error
        finally:
            lost = checkout.lost(exc)
            await self._release(failed=failed or lost)
        raise_classified(exc, lost=lost)

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
