"""The audit service's use cases: record messages in the chain, read the trail, verify it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from audit.adapters.unit_of_work import UnitOfWork
from audit.domain.entries import AuditedMessage, ChainReport, entry_for, verify_chain

UnitOfWorkFactory = Callable[[], UnitOfWork]


async def record(uow_factory: UnitOfWorkFactory, messages: list[AuditedMessage]) -> int:
    """Append one entry per message not yet recorded; returns how many were new."""
    now = datetime.now(UTC)
    async with uow_factory() as uow:
        return await uow.audit.append([entry_for(message, now) for message in messages])


async def list_entries(
    uow_factory: UnitOfWorkFactory,
    *,
    entity_id: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    after_id: int | None = None,
    limit: int,
    newest_first: bool = True,
) -> list[Any]:
    async with uow_factory() as uow:
        return await uow.audit.page(
            entity_id=entity_id,
            actor=actor,
            action=action,
            since=since,
            after_id=after_id,
            limit=limit,
            newest_first=newest_first,
        )


async def verify(uow_factory: UnitOfWorkFactory) -> ChainReport:
    async with uow_factory() as uow:
        entries = [stored async for stored in uow.audit.walk()]
    return verify_chain(entries)
