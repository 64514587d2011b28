"""The one place a transaction is opened: commit when the block succeeds, roll back if not.

A unit of work takes a connection from SQLAlchemy's pool and runs its statements, and its
transaction, on that connection's asyncpg driver (see `pgstatements`)."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.adapters.repository import AuditRepository
from pgstatements import (
    Checkout,
    DatabaseBusy,
    DatabaseUnavailable,
    Unstorable,
    raise_classified,
    unavailable,
)

# The errors are pgstatements', named here too: a service's callers see one module.
__all__ = ["DatabaseBusy", "DatabaseUnavailable", "UnitOfWork", "UnitOfWorkFactory", "Unstorable"]


class UnitOfWork:
    audit: AuditRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
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
        self.audit = AuditRepository(checkout.sql)
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
                await checkout.commit()
            elif not failed:
                await checkout.rollback()
        except Exception as error:  # committing or rolling back
            failed = True
            if exc is None and not checkout.lost(error):
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
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine)
