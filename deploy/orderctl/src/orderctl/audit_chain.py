"""The audit hash chain, verified by the audit service's own use case on its database
(`AUDIT_*`)."""

from __future__ import annotations

from audit import service
from audit.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from audit.app import build_engine
from audit.config import Settings
from audit.domain.entries import CHAIN_NOT_CHECKED, ChainReport

# The audit service's own errors for a database that does not answer.
UNREACHABLE = (DatabaseUnavailable, DatabaseBusy)
NOT_CHECKED = CHAIN_NOT_CHECKED


async def verify() -> ChainReport:
    engine = build_engine(Settings())
    try:
        return await service.verify(UnitOfWorkFactory(engine))
    finally:
        await engine.dispose()
