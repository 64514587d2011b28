"""The one place a transaction is opened: a use case runs inside `async with uow:` and the
unit of work commits when the block succeeds, or rolls back when it raises. Its statements
run on a pooled connection's asyncpg driver (a `pgstatements.Checkout`)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncEngine

from notifier.adapters.repository import CommunicationRepository, OptOutRepository, Outbox
from pgstatements import Checkout, DatabaseBusy, DatabaseUnavailable, Unstorable

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
        checkout = self._checkout = await Checkout.take(self._engine)
        await checkout.begin()
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
        checkout, self._checkout = self._checkout, None
        assert checkout is not None
        await checkout.end(exc, before_commit=self.outbox.flush)
        if exc is None and self.outbox.written:
            self._on_outbox_commit()


class UnitOfWorkFactory:
    """Hands each use case a fresh unit of work on the service's engine. `on_outbox_commit`
    runs after each commit that wrote outbox rows (the relay's wake-up call)."""

    def __init__(self, engine: AsyncEngine, on_outbox_commit: Callable[[], None]) -> None:
        self.engine = engine
        self.on_outbox_commit = on_outbox_commit

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.engine, self.on_outbox_commit)
