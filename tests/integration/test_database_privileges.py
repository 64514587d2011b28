"""Least privilege in PostgreSQL: each service runs as its own role, which reaches only its
own database, holds data privileges only (the audit role: read and append), and cannot change
the schema; the migrations run as the database's owner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

import audit.app
import audit.config
import notifier.app
import notifier.config
import order.app
import order.config
from audit import service as audit_service
from audit.adapters.schema import assert_schema_current as audit_schema_current
from audit.adapters.unit_of_work import UnitOfWorkFactory as AuditUnitOfWork
from contracts import Actor, Channel, Customer, OrderCreated, OrderStatus
from devstack import infra
from notifier import service as notifier_service
from notifier.adapters.schema import assert_schema_current as notifier_schema_current
from notifier.adapters.unit_of_work import UnitOfWorkFactory as NotifierUnitOfWork
from order import service as order_service
from order.adapters.metrics import OrderMetrics
from order.adapters.schema import assert_schema_current as order_schema_current
from order.adapters.unit_of_work import UnitOfWork as OrderUnitOfWork
from order.adapters.unit_of_work import UnitOfWorkFactory as OrderUnitOfWorkFactory
from order.domain.auth import AccessRefused, Role
from order.domain.model import Customer as OrderCustomer

pytestmark = pytest.mark.integration

SETTINGS = {
    "order": order.config.Settings,
    "notifier": notifier.config.Settings,
    "audit": audit.config.Settings,
}
MIGRATE: dict[str, Callable[[Any], None]] = {
    "order": order.app.migrate,
    "notifier": notifier.app.migrate,
    "audit": audit.app.migrate,
}
# One table of each service, for trying schema changes on.
A_TABLE = {"order": "orders", "notifier": "communication_events", "audit": "audit_log"}


def settings_for(databases: infra.TestDatabases, service: str) -> Any:
    database = databases.services[service]
    return SETTINGS[service](
        database_url=database.url, migration_database_url=database.migration_url
    )


def dsn(sqlalchemy_url: str, database: str | None = None) -> str:
    """A libpq DSN for asyncpg from a service URL, optionally for another database."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def migrated() -> Iterator[infra.TestDatabases]:
    """Databases of this module's own, each migrated by its service as the owner."""
    created = infra.create_test_databases("privileges")
    try:
        for service in infra.SERVICE_DATABASES:
            MIGRATE[service](settings_for(created, service))
        yield created
    finally:
        infra.drop_test_databases(created)


async def test_the_audit_role_cannot_change_entries_even_with_the_trigger_disabled(
    migrated: infra.TestDatabases,
) -> None:
    settings = settings_for(migrated, "audit")
    engine = audit.app.build_engine(settings)
    try:
        created = OrderCreated(
            order_id=uuid4(),
            status=OrderStatus.PENDING,
            version=1,
            customer=Customer(name="Ann", email="ann@example.com"),
            actor=Actor(id="alice", role="admin"),
        )
        recorded = await audit_service.record(AuditUnitOfWork(engine), [created])
        assert recorded.added == 1
    finally:
        await engine.dispose()

    admin = await asyncpg.connect(migrated.dsn("audit"))
    runtime = await asyncpg.connect(dsn(settings.database_url.get_secret_value()))
    try:
        before = await admin.fetch("SELECT * FROM audit_log ORDER BY id")
        # What only the table's owner (this admin is a member of it) can do: switch the guard
        # triggers off. The runtime role is still refused, by privilege.
        await admin.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        try:
            for statement in (
                "UPDATE audit_log SET actor = 'mallory'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
            ):
                with pytest.raises(
                    asyncpg.InsufficientPrivilegeError, match="permission denied for table"
                ):
                    await runtime.execute(statement)
            # Nor can it take the privilege or switch the guard off itself.
            await runtime.execute("GRANT UPDATE, DELETE ON audit_log TO CURRENT_USER")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await runtime.execute("DELETE FROM audit_log")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
                await runtime.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        finally:
            await admin.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
        assert await admin.fetch("SELECT * FROM audit_log ORDER BY id") == before
    finally:
        await runtime.close()
        await admin.close()


@pytest.mark.parametrize("service", list(infra.SERVICE_DATABASES))
async def test_each_role_connects_only_to_its_own_database(
    migrated: infra.TestDatabases, service: str
) -> None:
    own = migrated.services[service]
    for role_url in (own.url, own.migration_url):
        connection = await asyncpg.connect(dsn(role_url))
        await connection.close()
        for other, name in migrated.names.items():
            if other == service:
                continue
            with pytest.raises(
                asyncpg.InsufficientPrivilegeError, match="permission denied for database"
            ):
                await asyncpg.connect(dsn(role_url, name))


@pytest.mark.parametrize("service", list(infra.SERVICE_DATABASES))
async def test_a_runtime_role_cannot_change_the_schema(
    migrated: infra.TestDatabases, service: str
) -> None:
    runtime = await asyncpg.connect(dsn(migrated.services[service].url))
    table = A_TABLE[service]
    try:
        refused = {
            "CREATE TABLE sneaky (id int)": "permission denied for schema public",
            "CREATE TEMPORARY TABLE sneaky (id int)": "permission denied to create temporary",
            f"ALTER TABLE {table} ADD COLUMN sneaky int": "must be owner",
            f"CREATE INDEX sneaky ON {table} (id)": "must be owner",
            f"DROP TABLE {table}": "must be owner",
            "UPDATE alembic_version SET version_num = 'sneaky'": "permission denied for table",
        }
        for statement, reason in refused.items():
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=reason):
                await runtime.execute(statement)
    finally:
        await runtime.close()


async def test_migrations_run_as_the_owner_and_the_runtime_role_cannot_run_them() -> None:
    fresh = infra.create_test_databases("owner")
    try:
        for service in infra.SERVICE_DATABASES:
            settings = settings_for(fresh, service)
            as_runtime = settings.model_copy(
                update={"migration_database_url": settings.database_url}
            )
            with pytest.raises(DBAPIError, match="permission denied for schema public"):
                await asyncio.to_thread(MIGRATE[service], as_runtime)

            await asyncio.to_thread(MIGRATE[service], settings)
            roles = infra.SERVICE_ROLES[service]
            admin = await asyncpg.connect(fresh.dsn(service))
            try:
                owners = await admin.fetch(
                    "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class "
                    "WHERE relnamespace = 'public'::regnamespace"
                )
                database_owner = await admin.fetchval(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
                    fresh.names[service],
                )
            finally:
                await admin.close()
            assert {row["owner"] for row in owners} == {roles.owner}
            assert database_owner == roles.owner
    finally:
        infra.drop_test_databases(fresh)


async def test_each_service_works_as_its_runtime_role(migrated: infra.TestDatabases) -> None:
    """The schema check and a use case that writes, per service, on the runtime role only."""
    order_engine = order.app.build_engine(settings_for(migrated, "order"))
    notifier_engine = notifier.app.build_engine(settings_for(migrated, "notifier"))
    audit_engine = audit.app.build_engine(settings_for(migrated, "audit"))
    try:
        await order_schema_current(order_engine)
        await notifier_schema_current(notifier_engine)
        await audit_schema_current(audit_engine)

        orders = OrderUnitOfWorkFactory(order_engine)
        tokens = order.app.build_known_tokens(
            settings_for(migrated, "order"), orders, OrderMetrics()
        )
        token = await order_service.issue_token(orders, "runtime", Role.ADMIN)
        attempt = order_service.Attempt("GET", "/orders", None, None)
        who = await order_service.authorize(orders, tokens.lookup, token, None, attempt)
        assert (who.name, who.role) == ("runtime", Role.ADMIN)
        assert await order_service.revoke_tokens(orders, "runtime") == 1  # the trigger notifies
        with pytest.raises(AccessRefused):  # and announced for the audit, through the outbox
            await order_service.authorize(orders, tokens.lookup, token, None, attempt)
        actor = Actor(id="runtime")
        async with OrderUnitOfWork(order_engine) as uow:
            created = await order_service.create_order_in(
                uow, customer=OrderCustomer("R", None, None), actor=actor
            )
        async with OrderUnitOfWork(order_engine) as uow:
            await order_service.change_order_status_in(
                uow, created.id, OrderStatus.CONFIRMED, actor=actor
            )
        changed = await order_service.get_order(orders, created.id)
        assert (changed.status, changed.version) == (OrderStatus.CONFIRMED, 2)

        factory = NotifierUnitOfWork(notifier_engine, on_outbox_commit=lambda: None)
        assert await notifier_service.set_opt_out(
            factory, Channel.EMAIL, "ann@example.com", opted_out=True
        )
        assert await notifier_service.set_opt_out(
            factory, Channel.EMAIL, "ann@example.com", opted_out=False
        )

        report = await audit_service.verify(AuditUnitOfWork(audit_engine))
        assert report.ok
    finally:
        for engine in (order_engine, notifier_engine, audit_engine):
            await engine.dispose()
