"""The statements that look rows up by many keys at once keep looking them up in the keys'
index when PostgreSQL kept their plan from while the table was empty (a fresh database's
first minutes) and the table has grown since, unanalysed. That generic plan used to read
the whole table on every run (see `pgstatements.without_sequential_scans`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

import audit.app
import audit.config
import notifier.app
import notifier.config
import order.app
import order.config
from audit.adapters.repository import RECORDED, AuditRepository
from devstack import infra
from notifier.adapters import outbox_relay as notifier_relay
from order.adapters import outbox_relay as order_relay
from pgstatements import Sql, Statement

pytestmark = pytest.mark.integration

# Past the five runs PostgreSQL plans one by one, it keeps the generic plan.
RUNS_BEFORE_GROWTH = 8
GROWN_ROWS = 20_000
KEYS = 50  # looked up per run, as a consumer batch would

# Each service's Settings, migrate and build_engine.
SERVICES: dict[str, tuple[Callable[..., Any], Callable[[Any], None], Callable[[Any], Any]]] = {
    "order": (order.config.Settings, order.app.migrate, order.app.build_engine),
    "notifier": (notifier.config.Settings, notifier.app.migrate, notifier.app.build_engine),
    "audit": (audit.config.Settings, audit.app.migrate, audit.app.build_engine),
}

# Rows that grow a table, without an analysis (autovacuum is off for it in these tests).
GROW = {
    ("audit", "audit_log"): """
        INSERT INTO audit_log (event_id, action, actor, entity_type, entity_id, occurred_at,
                               recorded_at, source, details, prev_hash, hash)
        SELECT gen_random_uuid(), 'order.status_changed', 'test', 'order', g::text, now(), now(),
               'orders.events', '{}', md5('prev' || g), md5('this' || g)
        FROM generate_series(1, $1::int) AS g""",
    ("order", "outbox"): """
        INSERT INTO outbox (event_id, topic, key, event_type, payload, published_at)
        SELECT gen_random_uuid(), 'some.topic', g::text, 'OrderStatusChanged', '{}', now()
        FROM generate_series(1, $1::int) AS g""",
    ("notifier", "outbox"): """
        INSERT INTO outbox (event_id, topic, key, payload, published_at)
        SELECT gen_random_uuid(), 'some.topic', g::text, '{}', now()
        FROM generate_series(1, $1::int) AS g""",
}


@pytest.fixture(scope="module")
def databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("lookup_plans")
    try:
        for name, (settings, migrate, _) in SERVICES.items():
            database = created.services[name]
            migrate(
                settings(database_url=database.url, migration_database_url=database.migration_url)
            )
        yield created
    finally:
        infra.drop_test_databases(created)


async def as_admin(databases: infra.TestDatabases, service: str, sql: str, *args: Any) -> None:
    """Run `sql` on the service's database as the admin (a member of its owners)."""
    admin = await asyncpg.connect(databases.dsn(service))
    try:
        await admin.execute(sql, *args)
    finally:
        await admin.close()


@asynccontextmanager
async def one_connection(
    databases: infra.TestDatabases, service: str, table: str
) -> AsyncIterator[asyncpg.Connection]:
    """One connection as the service's runtime role, with the codecs its engine installs (a
    prepared statement's plans are the connection's own), to the service's empty `table`,
    analysed as a first autoanalyze finds it and then left alone by autovacuum: an analysis
    would replace the plan kept."""
    await as_admin(databases, service, f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    await as_admin(databases, service, f"ANALYZE {table}")
    settings, _, build_engine = SERVICES[service]
    engine = build_engine(settings(database_url=databases.services[service].url))
    try:
        async with engine.connect() as connection:
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            yield driver
    finally:
        await engine.dispose()


async def plan_after_growth(
    databases: infra.TestDatabases,
    service: str,
    table: str,
    statement: Statement,
    transaction: Callable[[Sql], Awaitable[None]],
) -> dict[str, Any]:
    """Run `transaction` (which runs `statement`) on the empty table until PostgreSQL keeps a
    generic plan, grow the table, run it once more: the plan the statement then runs with."""
    async with one_connection(databases, service, table) as driver:
        sql = Sql(driver)
        for _ in range(RUNS_BEFORE_GROWTH):
            async with driver.transaction():
                await transaction(sql)
        await as_admin(databases, service, GROW[service, table], GROWN_ROWS)
        async with driver.transaction():
            await transaction(sql)

        prepared = await driver.fetchrow(
            "SELECT name, generic_plans FROM pg_prepared_statements WHERE statement = $1",
            statement.sql,
        )
        assert prepared is not None, "the statement ran on this connection, prepared"
        assert prepared["generic_plans"] > 0, "PostgreSQL runs it with the generic plan"
        # Outside the transaction, with nothing forbidden: a generic plan does not change with
        # the arguments (all null here) or the settings.
        nulls = ", ".join("NULL" for _ in statement.names)
        explained = await driver.fetchval(
            f'EXPLAIN (FORMAT JSON) EXECUTE "{prepared["name"]}"({nulls})'
        )
    plans = json.loads(explained) if isinstance(explained, str) else explained
    plan: dict[str, Any] = plans[0]["Plan"]
    return plan


def reads_of(plan: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """The nodes of `plan` that read `table`'s rows (an UPDATE's own node aside)."""
    reads = [plan] if plan.get("Relation Name") == table and "Operation" not in plan else []
    for child in plan.get("Plans", []):
        reads += reads_of(child, table)
    return reads


def assert_looked_up_in(plan: dict[str, Any], table: str, index: str) -> None:
    reads = reads_of(plan, table)
    assert reads, plan
    for node in reads:
        assert node.get("Index Name") == index, json.dumps(plan, indent=1)
        assert "Index Cond" in node, json.dumps(plan, indent=1)


async def test_the_audit_duplicate_check_looks_event_ids_up_in_their_index(
    databases: infra.TestDatabases,
) -> None:
    async def append(sql: Sql) -> None:
        """As an append runs them: the chain's lock and tail, then the check."""
        audit = AuditRepository(sql)
        await audit.lock_tail()
        await audit.recorded([uuid4() for _ in range(KEYS)])

    plan = await plan_after_growth(databases, "audit", "audit_log", RECORDED, append)

    assert_looked_up_in(plan, "audit_log", "audit_log_event_id_key")


@pytest.mark.parametrize(
    ("service", "relay"), [("order", order_relay), ("notifier", notifier_relay)]
)
async def test_marking_outbox_rows_published_looks_them_up_by_id(
    databases: infra.TestDatabases, service: str, relay: Any
) -> None:
    async def batch(sql: Sql) -> None:
        """As a relay's batch runs them: its lock, then marking what Kafka took."""
        assert await sql.value(relay.OUTBOX.try_relay_lock)
        await sql.execute(relay.OUTBOX.mark_published, {"ids": list(range(1, KEYS + 1))})

    plan = await plan_after_growth(databases, service, "outbox", relay.OUTBOX.mark_published, batch)

    assert_looked_up_in(plan, "outbox", "outbox_pkey")
