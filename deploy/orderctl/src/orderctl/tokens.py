"""API tokens, through the order service's own use cases on its database (`ORDER_*`)."""

from __future__ import annotations

from order import service
from order.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from order.app import build_engine
from order.config import Settings
from order.domain.auth import Role

# The order service's own errors for a database that does not answer.
UNREACHABLE = (DatabaseUnavailable, DatabaseBusy)


async def create(name: str, role: Role, *, replace: bool) -> str:
    settings = Settings()
    engine = build_engine(settings)
    try:
        uow = UnitOfWorkFactory(engine, settings.database_wait_seconds)
        return await service.issue_token(uow, name, role, replace=replace)
    finally:
        await engine.dispose()


async def revoke(name: str) -> int:
    settings = Settings()
    engine = build_engine(settings)
    try:
        return await service.revoke_tokens(
            UnitOfWorkFactory(engine, settings.database_wait_seconds), name
        )
    finally:
        await engine.dispose()
