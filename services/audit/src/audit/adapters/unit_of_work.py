"""The one place a transaction is opened: commit when the block succeeds, roll back if not.
Its statements run on a pooled connection's asyncpg driver (a `pgstatements.Checkout`)."""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.adapters.repository import AuditRepository
from pgstatements import Checkout, DatabaseBusy, DatabaseUnavailable, Unstorable

# The errors are pgstatements', named here too: a service's callers see one module.
__all__ = ["DatabaseBusy", "DatabaseUnavailable", "UnitOfWork", "UnitOfWorkFactory", "Unstorable"]


class UnitOfWork:
    audit: AuditRepository

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._checkout: Checkout | None = None

    async def __aenter__(self) -> UnitOfWork:
        checkout = self._checkout = await Checkout.take(self._engine)
        await checkout.begin()
        self.audit = AuditRepository(checkout.sql)
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


class UnitOfWorkFactory:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine)
