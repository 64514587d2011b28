"""The upkeep statements of a transactional outbox table, whichever service's: its rows are
numbered by `id`, wait while `published_at` is null, and are kept for a retention once
published. What each relay reads and publishes stays its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ARRAY, BigInteger, Table, any_, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from pgstatements.checkout import transaction
from pgstatements.statements import DIALECT, Statement, compiled, without_sequential_scans


@dataclass(frozen=True)
class Backlog:
    rows: int  # not yet acknowledged by Kafka
    oldest_age_seconds: float  # 0 when there are none


class OutboxStatements:
    """The statements on one outbox table, compiled once. `relay_lock_key` names the table's
    relay among advisory locks: one relay publishes at a time, whatever the replicas."""

    def __init__(self, table: Table, relay_lock_key: int) -> None:
        # A relay's batch starts with it. The lock is transaction-scoped: it ends with the
        # batch. Its statement also keeps the batch's lookups of rows by id (marking them
        # published, among others) on their indexes (see without_sequential_scans).
        self.try_relay_lock: Statement = compiled(
            select(func.pg_try_advisory_xact_lock(relay_lock_key), without_sequential_scans())
        )
        self.mark_published: Statement = compiled(
            update(table)
            # One array parameter, so one prepared statement for every batch size.
            .where(table.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
            .values(published_at=func.now())
        )
        # Published rows past the retention, oldest first, through the index on
        # `published_at`: the rows still kept are not read, and a backlog of them (after a long
        # stop, or a shortened retention) goes in short transactions that let publishing carry
        # on in between.
        name = DIALECT.identifier_preparer.format_table(table)  # its definition's, quoted
        self._purge_published = compiled(
            text(
                f"DELETE FROM {name} WHERE ctid = ANY(ARRAY("  # noqa: S608 (no input in it)
                f" SELECT ctid FROM {name} WHERE published_at < now() - CAST(:age AS interval)"
                " ORDER BY published_at LIMIT :limit))"
            )
        )
        # The partial index on unpublished rows keeps this cheap while the backlog is small.
        self._backlog = compiled(
            select(
                func.count().label("rows"),
                func.extract("epoch", func.now() - func.min(table.c.created_at)).label("oldest"),
            ).where(table.c.published_at.is_(None))
        )

    async def purge_published(self, engine: AsyncEngine, retention: timedelta, limit: int) -> int:
        """Delete up to `limit` rows published longer ago than `retention`, oldest first; they
        served their purpose. Returns how many."""
        async with transaction(engine) as sql:
            return await sql.execute(self._purge_published, {"age": retention, "limit": limit})

    async def backlog(self, engine: AsyncEngine) -> Backlog:
        """How many rows wait for Kafka, and for how long the oldest has."""
        async with transaction(engine) as sql:
            backlog = await sql.row(self._backlog)
        assert backlog is not None  # an aggregate has one row
        return Backlog(int(backlog["rows"]), float(backlog["oldest"] or 0.0))
