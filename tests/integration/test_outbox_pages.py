"""The outboxes keep room in each page for their rows' published versions: marking a row
published rewrites it in its own page, so the WAL holds only the bytes that changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import BigInteger, Table, insert, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

import notifier.app
import notifier.config
import order.app
import order.config
from devstack import infra
from notifier.adapters.tables import outbox as notifier_outbox
from order.adapters.tables import outbox as order_outbox
from pgstatements import OutboxStatements, transaction

pytestmark = pytest.mark.integration

ROWS = 40  # about five pages of rows of this size, filled as tightly as the table allows
# An announcement's size: ids, a dedupe key, a recipient, a Message-ID (about 600 bytes).
PAYLOAD = {
    "event_id": str(uuid4()),
    "dedupe_key": "d" * 64,
    "recipient": "ann+0123456789ab@example.com",
    "provider_message_id": f"<{'m' * 64}@backbone.local>",
    "details": "x" * 300,
}


@dataclass(frozen=True)
class ServiceOutbox:
    settings: Callable[..., Any]  # the service's Settings
    migrate: Callable[[Any], None]
    build_engine: Callable[[Any], AsyncEngine]
    table: Table


SERVICES = {
    "order": ServiceOutbox(
        order.config.Settings, order.app.migrate, order.app.build_engine, order_outbox
    ),
    "notifier": ServiceOutbox(
        notifier.config.Settings, notifier.app.migrate, notifier.app.build_engine, notifier_outbox
    ),
}


@pytest.fixture(scope="module")
def outbox_databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("outbox_pages")
    try:
        for name, service in SERVICES.items():
            database = created.services[name]
            service.migrate(
                service.settings(
                    database_url=database.url, migration_database_url=database.migration_url
                )
            )
        yield created
    finally:
        infra.drop_test_databases(created)


@pytest.fixture(params=list(SERVICES))
async def service_outbox(
    request: pytest.FixtureRequest, outbox_databases: infra.TestDatabases
) -> AsyncIterator[tuple[AsyncEngine, Table]]:
    """A service's engine (as its runtime role) and its outbox table."""
    service = SERVICES[request.param]
    engine = service.build_engine(
        service.settings(database_url=outbox_databases.services[request.param].url)
    )
    yield engine, service.table
    await engine.dispose()


async def pages_of_rows(engine: AsyncEngine, table: Table) -> dict[int, int]:
    """Each row's id → the page its current version is in."""
    page = literal_column("(ctid::text::point)[0]::bigint", BigInteger)
    async with engine.connect() as connection:
        result = await connection.execute(select(table.c.id, page))
        return {row_id: block for row_id, block in result}


async def test_marking_rows_published_rewrites_each_in_its_own_page(
    service_outbox: tuple[AsyncEngine, Table],
) -> None:
    engine, table = service_outbox
    rows: list[dict[str, Any]] = [
        {
            "event_id": uuid4(),
            "topic": "some.topic",
            "key": str(uuid4()),
            "payload": {**PAYLOAD, "n": n},
            "headers": {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01"},
        }
        for n in range(ROWS)
    ]
    if "event_type" in table.c:
        rows = [{**row, "event_type": "OrderStatusChanged"} for row in rows]
    async with engine.begin() as connection:
        await connection.execute(insert(table), rows)
    inserted_in = await pages_of_rows(engine, table)
    assert len(set(inserted_in.values())) > 1, "the rows should fill more than one page"
    assert len(json.dumps(PAYLOAD)) > 500

    async with transaction(engine) as sql:
        marked = await sql.execute(
            OutboxStatements(table, relay_lock_key=1).mark_published, {"ids": list(inserted_in)}
        )
    assert marked == ROWS

    assert await pages_of_rows(engine, table) == inserted_in
