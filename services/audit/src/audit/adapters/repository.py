"""Appends to the hash-chained audit log and reads it back."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import ARRAY, DateTime, any_, bindparam, func, insert, select

from audit.adapters.tables import audit_log
from audit.domain.entries import GENESIS_HASH, AuditEntry, ChainedEntry, StoredEntry
from pgstatements import Sql, compiled, without_sequential_scans

# Names "the audit chain tail" among the advisory locks of the audit database.
CHAIN_LOCK_KEY = 0x61756469745F01

# The statements of every append, compiled once. The lock's statement also keeps the
# duplicate check, which looks up a batch's event ids, on their index (see
# without_sequential_scans).
LOCK_CHAIN = compiled(
    select(func.pg_advisory_xact_lock(CHAIN_LOCK_KEY), without_sequential_scans())
)
CHAIN_TAIL = compiled(
    select(
        func.clock_timestamp(type_=DateTime(timezone=True)),
        select(audit_log.c.hash).order_by(audit_log.c.id.desc()).limit(1).scalar_subquery(),
    )
)
RECORDED = compiled(
    select(audit_log.c.event_id).where(
        audit_log.c.event_id == any_(bindparam("event_ids", type_=ARRAY(audit_log.c.event_id.type)))
    )
)
# One parameter per column but the identity, named after it (see `insert`).
INSERT_ENTRY = compiled(
    insert(audit_log).inline(),
    columns=[column.name for column in audit_log.c if column is not audit_log.c.id],
)


@dataclass(frozen=True)
class ChainTail:
    hash: str
    now: datetime


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(
        event_id=row["event_id"],
        action=row["action"],
        actor=row["actor"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        occurred_at=row["occurred_at"],
        recorded_at=row["recorded_at"],
        source=row["source"],
        before=row["before"],
        after=row["after"],
        reason=row["reason"],
        correlation_id=row["correlation_id"],
        details=row["details"],
    )


class AuditRepository:
    def __init__(self, sql: Sql) -> None:
        self._sql = sql

    async def lock_tail(self) -> ChainTail:
        """Take the chain for this transaction and return its tail: the last entry's hash and
        the database's clock.

        Why: the chain is one sequence, and every replica of the service appends to it. Two
        appenders reading the same tail would fork it, so appends are serialised by a
        transaction-scoped advisory lock on a constant, held until commit or rollback. The
        tail is read by a second statement *after* the lock is granted: under READ COMMITTED
        (which the engine sets) each statement sees everything committed before it started,
        so it sees the previous holder's entries. The lock is held only for the short append
        transaction and callers append whole consumer batches, so replicas still share the
        consuming and parsing while only the append itself is serial. A UNIQUE constraint on
        prev_hash backs this up: a fork fails to insert instead of being stored. The clock
        is read under the lock so `recorded_at` never goes backwards along the chain."""
        await self._sql.execute(LOCK_CHAIN)
        row = await self._sql.row(CHAIN_TAIL)
        assert row is not None  # a SELECT without FROM has one row
        return ChainTail(hash=row[1] or GENESIS_HASH, now=row[0])

    async def recorded(self, event_ids: list[UUID]) -> set[UUID]:
        """Which of `event_ids` already have an entry."""
        rows = await self._sql.rows(RECORDED, {"event_ids": event_ids})
        return {row["event_id"] for row in rows}

    async def insert(self, links: list[ChainedEntry]) -> None:
        """Store linked entries; their ids follow the list's order, which is the chain's."""
        if not links:
            return
        rows = [
            {
                "event_id": link.entry.event_id,
                "action": link.entry.action,
                "actor": link.entry.actor,
                "entity_type": link.entry.entity_type,
                "entity_id": link.entry.entity_id,
                "occurred_at": link.entry.occurred_at,
                "recorded_at": link.entry.recorded_at,
                "source": link.entry.source,
                "before": link.entry.before,
                "after": link.entry.after,
                "reason": link.entry.reason,
                "correlation_id": link.entry.correlation_id,
                "details": link.entry.details,
                "prev_hash": link.prev_hash,
                "hash": link.hash,
            }
            for link in links
        ]
        await self._sql.execute_many(INSERT_ENTRY, rows)

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
    ) -> list[Mapping[str, Any]]:
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
        return list(await self._sql.rows(query))

    async def walk(self, batch: int = 1000) -> AsyncGenerator[StoredEntry, None]:
        """Every entry in chain order, read in batches."""
        last_id = 0
        while True:
            rows = await self._sql.rows(
                select(audit_log)
                .where(audit_log.c.id > last_id)
                .order_by(audit_log.c.id)
                .limit(batch)
            )
            if not rows:
                return
            for row in rows:
                yield StoredEntry(row["id"], _entry(row), row["prev_hash"], row["hash"])
            last_id = rows[-1]["id"]
