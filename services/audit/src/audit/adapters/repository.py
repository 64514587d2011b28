"""Appends to the hash-chained audit log and reads it back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.adapters.tables import audit_log
from audit.domain.entries import GENESIS_HASH, AuditEntry, StoredEntry, chain_hash

# Names "the audit chain tail" among advisory locks.
CHAIN_LOCK_KEY = 0x61756469745F01


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        event_id=row.event_id,
        action=row.action,
        actor=row.actor,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
        source=row.source,
        before=row.before,
        after=row.after,
        reason=row.reason,
        correlation_id=row.correlation_id,
        details=row.details,
    )


class AuditRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def append(self, entries: list[AuditEntry]) -> int:
        """Append entries not yet recorded, each linked to the one before; returns how many
        were new.

        Concurrency: the chain is one sequence, so appends from every replica are serialised
        by a transaction-scoped advisory lock taken before reading the tail. The lock is held
        only for this short transaction (read tail, hash, insert), and callers pass whole
        consumer batches, so replicas still share the consuming, parsing and I/O while only
        the append itself is serial. Already-recorded event ids are skipped, which makes a
        redelivered message change nothing."""
        await self._connection.execute(select(func.pg_advisory_xact_lock(CHAIN_LOCK_KEY)))
        known = set(
            (
                await self._connection.execute(
                    select(audit_log.c.event_id).where(
                        audit_log.c.event_id.in_([e.event_id for e in entries])
                    )
                )
            ).scalars()
        )
        prev_hash = (
            await self._connection.scalar(
                select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1)
            )
        ) or GENESIS_HASH
        added = 0
        for entry in entries:
            if entry.event_id in known:
                continue
            known.add(entry.event_id)
            entry_hash = chain_hash(prev_hash, entry)
            await self._connection.execute(
                pg_insert(audit_log).values(
                    event_id=entry.event_id,
                    action=entry.action,
                    actor=entry.actor,
                    entity_type=entry.entity_type,
                    entity_id=entry.entity_id,
                    occurred_at=entry.occurred_at,
                    recorded_at=entry.recorded_at,
                    source=entry.source,
                    before=entry.before,
                    after=entry.after,
                    reason=entry.reason,
                    correlation_id=entry.correlation_id,
                    details=entry.details,
                    prev_hash=prev_hash,
                    hash=entry_hash,
                )
            )
            prev_hash = entry_hash
            added += 1
        return added

    async def page(
        self,
        *,
        entity_id: str | None,
        actor: str | None,
        action: str | None,
        since: datetime | None,
        after_id: int | None,
        limit: int,
        newest_first: bool,
    ) -> list[Any]:
        c = audit_log.c
        query = select(audit_log).limit(limit)
        query = query.order_by(c.id.desc() if newest_first else c.id)
        for column, value in ((c.entity_id, entity_id), (c.actor, actor), (c.action, action)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(c.occurred_at >= since)
        if after_id is not None:
            query = query.where(c.id < after_id if newest_first else c.id > after_id)
        return list((await self._connection.execute(query)).all())

    async def walk(self, batch: int = 1000) -> AsyncIterator[StoredEntry]:
        """Every entry in chain order, read in batches."""
        last_id = 0
        while True:
            rows = (
                await self._connection.execute(
                    select(audit_log)
                    .where(audit_log.c.id > last_id)
                    .order_by(audit_log.c.id)
                    .limit(batch)
                )
            ).all()
            if not rows:
                return
            for row in rows:
                yield StoredEntry(row.id, _entry(row), row.prev_hash, row.hash)
            last_id = rows[-1].id
