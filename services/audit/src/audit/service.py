"""The audit service's use cases: record messages in the chain, read the trail, verify it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from audit.adapters.unit_of_work import UnitOfWork, Unstorable
from audit.domain.entries import (
    AuditedMessage,
    ChainCheck,
    ChainReport,
    audit_event_id,
    chained,
    new_entries,
)

UnitOfWorkFactory = Callable[[], UnitOfWork]


@dataclass(frozen=True)
class Recorded:
    added: int
    # Position in the given list → why the database refused that message's entry.
    refused: dict[int, str] = field(default_factory=dict)


async def _append(uow_factory: UnitOfWorkFactory, messages: list[AuditedMessage]) -> int:
    async with uow_factory() as uow:
        tail = await uow.audit.lock_tail()
        recorded = await uow.audit.recorded([audit_event_id(m) for m in messages])
        links = chained(tail.hash, new_entries(messages, recorded, tail.now))
        await uow.audit.insert(links)
    return len(links)


async def record(uow_factory: UnitOfWorkFactory, messages: list[AuditedMessage]) -> Recorded:
    """Append one entry per message not recorded yet, the whole batch in one transaction.

    If the database refuses some message's content, the batch is appended again one message
    at a time so the others still get in, and the refused ones are returned with the reason
    (for the dead-letter topic). Any other failure propagates: the caller retries the batch,
    which is safe because recorded messages are skipped."""
    try:
        return Recorded(await _append(uow_factory, messages))
    except Unstorable as error:
        if len(messages) == 1:
            return Recorded(0, {0: str(error)})
    added, refused = 0, {}
    for position, message in enumerate(messages):
        try:
            added += await _append(uow_factory, [message])
        except Unstorable as error:
            refused[position] = str(error)
    return Recorded(added, refused)


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
) -> list[Mapping[str, Any]]:
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
    """Walk the whole chain from the first entry; stop at the first broken link."""
    check = ChainCheck()
    async with uow_factory() as uow, aclosing(uow.audit.walk()) as entries:
        async for stored in entries:
            if not check.add(stored):
                break
    return check.report()
