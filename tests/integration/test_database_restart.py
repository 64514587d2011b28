"""Each service through PostgreSQL going away, on a cluster of the test's own (so the
restart disturbs nothing else). The order service: changes arriving during a restart wait and
then succeed, none lost or applied twice; a database away for longer than the configured wait
gives a clear 503 with nothing changed, and the service recovers by itself. The notifier's and
the audit service's read APIs: 503 while their database is away or every connection is busy,
never a 500, and answers again once it is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import infra
from devstack.processes import free_port
from devstack.waiting import wait_until
from order.config import Settings
from tests.integration.conftest import (
    OrderService,
    TokenIssuer,
    TopicReader,
    audit_settings,
    notifier_settings,
    order_settings,
    running_audit,
    running_notifier,
    running_order_service,
)

LIFECYCLE = ["confirmed", "preparing", "ready", "out_for_delivery", "delivered"]


@dataclass
class Timed:
    order_id: UUID
    status_code: int
    started: float
    finished: float


@pytest.fixture(scope="module")
def cluster() -> Iterator[infra.Postgres]:
    postgres = infra.restartable_test_postgres()
    yield postgres
    postgres.start()  # as a test may have left it stopped


@pytest.fixture
def own_databases(cluster: infra.Postgres) -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("pgdown", admin_url=cluster.admin_url)
    yield created
    infra.drop_test_databases(created)


def settings_for(databases: infra.TestDatabases, kafka_bootstrap: str, wait: float) -> Settings:
    return order_settings(
        databases, kafka_bootstrap, relay_retry_seconds=0.5, database_wait_seconds=wait
    )


async def create_order(order: OrderService) -> UUID:
    response = await order.client.post(
        "/orders", json={"customer": {"name": "Restart"}}, headers=order.as_admin()
    )
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def test_changes_during_a_postgres_restart_wait_and_all_succeed_once(
    cluster: infra.Postgres,
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    order_events: TopicReader,
) -> None:
    async with running_order_service(settings_for(own_databases, kafka_bootstrap, 30)) as order:
        orders = [await create_order(order) for _ in range(24)]
        answers: list[Timed] = []

        async def walk(order_ids: list[UUID]) -> None:
            for order_id in order_ids:
                for target in LIFECYCLE:
                    started = time.monotonic()
                    response = await order.client.post(
                        f"/orders/{order_id}/status",
                        json={"status": target},
                        headers=order.as_admin(),
                    )
                    answers.append(Timed(order_id, response.status_code, started, time.monotonic()))
                    await asyncio.sleep(0.1)  # a steady pace, so changes span the restart

        walking = asyncio.gather(*(walk(orders[n::8]) for n in range(8)))
        await wait_until(lambda: len(answers), lambda n: n >= 16, within=30, what="load")
        went_away = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start)
        came_back = time.monotonic()
        await walking

        assert [a for a in answers if a.status_code != 200] == []
        assert len(answers) == len(orders) * len(LIFECYCLE)
        spanning = [a for a in answers if a.started < came_back and a.finished > went_away]
        assert spanning, "no change was in flight while the database was away"

        await order_events.wait_for_keys({str(o) for o in orders})
        for order_id in orders:
            events = await order_events.values_for(str(order_id), 1 + len(LIFECYCLE))
            changes = [e for e in events if e["type"] == "OrderStatusChanged"]
            assert [(e["to"], e["version"]) for e in changes] == [
                (status, version) for version, status in enumerate(LIFECYCLE, start=2)
            ]
            history = await order.client.get(
                f"/orders/{order_id}/history", headers=order.as_viewer()
            )
            assert [h["version"] for h in history.json()["items"]] == [1, 2, 3, 4, 5, 6]


async def test_a_database_away_longer_than_the_wait_gives_503_then_recovers(
    cluster: infra.Postgres,
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
) -> None:
    async with running_order_service(settings_for(own_databases, kafka_bootstrap, 1)) as order:
        order_id = await create_order(order)
        await asyncio.to_thread(cluster.stop)
        try:
            change = await order.client.post(
                f"/orders/{order_id}/status",
                json={"status": "confirmed"},
                headers={**order.as_admin(), "Idempotency-Key": "confirm-once"},
            )
            assert change.status_code == 503
            assert change.headers["Retry-After"] == "1"
            assert change.json()["error"]["code"] == "database_unavailable"
            read = await order.client.get(f"/orders/{order_id}", headers=order.as_viewer())
            assert (read.status_code, read.json()["error"]["code"]) == (
                503,
                "database_unavailable",
            )
            assert (await order.client.get("/health/ready")).status_code == 503
        finally:
            await asyncio.to_thread(cluster.start)

        retried = await order.client.post(
            f"/orders/{order_id}/status",
            json={"status": "confirmed"},
            headers={**order.as_admin(), "Idempotency-Key": "confirm-once"},
        )
        assert (retried.status_code, retried.json()["version"]) == (200, 2)


# The read API each of the other two services has.
READ_APIS = {"notifier": "/communications", "audit": "/audit"}


def read_api(
    service: str,
    databases: infra.TestDatabases,
    kafka_bootstrap: str,
    token_issuer: TokenIssuer,
    **overrides: Any,
) -> AbstractAsyncContextManager[tuple[httpx.AsyncClient, FastAPI]]:
    """The notifier or the audit service, running in this process on `databases`; the client
    reads with a viewer token."""
    overrides["order_service_url"] = token_issuer.url
    if service == "notifier":
        notifier = notifier_settings(databases, kafka_bootstrap, free_port(), **overrides)
        return running_notifier(notifier, token_issuer.as_viewer())
    audit = audit_settings(databases, kafka_bootstrap, **overrides)
    return running_audit(audit, token_issuer.as_viewer())


def assert_database_answer(response: httpx.Response, code: str) -> None:
    assert (response.status_code, response.json()["error"]["code"]) == (503, code), response.text
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("service", sorted(READ_APIS))
async def test_a_read_while_the_database_is_away_gives_503_then_answers_again(
    service: str,
    cluster: infra.Postgres,
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    token_issuer: TokenIssuer,
) -> None:
    path = READ_APIS[service]
    async with read_api(service, own_databases, kafka_bootstrap, token_issuer) as (client, _):
        assert (await client.get(path)).status_code == 200  # the token is checked and cached
        await asyncio.to_thread(cluster.stop)
        try:
            assert_database_answer(await client.get(path), "database_unavailable")
            assert (await client.get("/health/ready")).status_code == 503
        finally:
            await asyncio.to_thread(cluster.start)
        back = await client.get(path)
        assert (back.status_code, back.json()["items"]) == (200, [])


@pytest.mark.parametrize("service", sorted(READ_APIS))
async def test_a_read_finding_every_connection_busy_gives_503_database_busy(
    service: str,
    own_databases: infra.TestDatabases,
    kafka_bootstrap: str,
    token_issuer: TokenIssuer,
) -> None:
    one_connection = {
        "database_pool_size": 1,
        "database_pool_overflow": 0,
        "database_pool_wait_seconds": 0.5,
    }
    async with read_api(
        service, own_databases, kafka_bootstrap, token_issuer, **one_connection
    ) as (client, app):
        assert (await client.get(READ_APIS[service])).status_code == 200  # token now cached
        engine: AsyncEngine = app.state.engine
        async with engine.connect():  # the pool's one connection, held
            assert_database_answer(await client.get(READ_APIS[service]), "database_busy")
        assert (await client.get(READ_APIS[service])).status_code == 200
