"""The order service's relayed reads (an order's communications and audit timeline, for the
admin page) when the notifier and the audit service cannot answer: 503 in the error shape,
never a 5xx of another kind or a hang, and the order API itself unaffected. With both peers
running, the relayed reads are checked end to end in tests/e2e/test_admin_page.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import httpx
import pytest

from devstack import infra
from devstack.processes import free_port
from order.app import build_app
from order.config import Settings
from tests.integration.conftest import OrderService, running_order_service
from tests.integration.read_api_auth import assert_refused, get_without_token

PEER_TIMEOUT_SECONDS = 0.5
RELAYED = ("communications", "audit")


@pytest.fixture(scope="module")
def own_database() -> Iterator[dict[str, Any]]:
    created = infra.create_test_databases("peers")
    yield {
        "database_url": created.urls["order"],
        "migration_database_url": created.migration_urls["order"],
    }
    infra.drop_test_databases(created)


@pytest.fixture
async def silent_peer() -> AsyncIterator[str]:
    """A peer that accepts connections and never answers (a hung process)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def settings_with_peers(own_database: dict[str, Any], notifier: str, audit: str) -> Settings:
    # Kafka too is nowhere: neither the reads nor the change below may need it.
    return Settings(
        **own_database,
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        notifier_service_url=notifier,
        audit_service_url=audit,
        peer_timeout_seconds=PEER_TIMEOUT_SECONDS,
    )


async def create_order(order: OrderService) -> str:
    created = await order.client.post(
        "/orders", json={"customer": {"name": "Peers"}}, headers=order.as_admin()
    )
    assert created.status_code == 201, created.text
    order_id: str = created.json()["id"]
    return order_id


def assert_unavailable(response: httpx.Response, peer: str) -> None:
    assert_refused(response, 503, f"{peer}_unavailable")
    assert response.json()["error"]["details"] == {"dependency": peer}
    assert int(response.headers["Retry-After"]) > 0


async def test_with_the_peers_down_the_reads_are_503_and_a_change_still_succeeds(
    own_database: dict[str, Any],
) -> None:
    nowhere = {peer: f"http://127.0.0.1:{free_port()}" for peer in ("notifier", "audit")}
    settings = settings_with_peers(own_database, nowhere["notifier"], nowhere["audit"])
    async with running_order_service(settings) as order:
        order_id = await create_order(order)

        communications = await order.client.get(
            f"/orders/{order_id}/communications", headers=order.as_viewer()
        )
        audit = await order.client.get(f"/orders/{order_id}/audit", headers=order.as_viewer())
        changed = await order.client.post(
            f"/orders/{order_id}/status",
            json={"status": "confirmed"},
            headers={**order.as_admin(), "If-Match": "1"},
        )

        assert_unavailable(communications, "notifier")
        assert_unavailable(audit, "audit")
        assert changed.status_code == 200, changed.text
        assert (changed.json()["status"], changed.json()["version"]) == ("confirmed", 2)


async def test_a_peer_that_does_not_answer_is_503_within_the_timeout(
    own_database: dict[str, Any], silent_peer: str
) -> None:
    async with running_order_service(
        settings_with_peers(own_database, silent_peer, silent_peer)
    ) as order:
        order_id = await create_order(order)
        for relayed, peer in zip(RELAYED, ("notifier", "audit"), strict=True):
            started = time.monotonic()
            response = await order.client.get(
                f"/orders/{order_id}/{relayed}", headers=order.as_admin()
            )
            took = time.monotonic() - started

            assert_unavailable(response, peer)
            assert PEER_TIMEOUT_SECONDS <= took < PEER_TIMEOUT_SECONDS + 3, took


async def test_the_order_service_refuses_and_checks_before_asking_a_peer(
    own_database: dict[str, Any],
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with running_order_service(settings_with_peers(own_database, nowhere, nowhere)) as order:
        order_id = await create_order(order)
        for relayed in RELAYED:
            path = f"/orders/{order_id}/{relayed}"
            assert_refused(await get_without_token(order.client, path), 401, "unauthenticated")
            unknown = await order.client.get(
                f"/orders/{uuid4()}/{relayed}", headers=order.as_admin()
            )
            assert_refused(unknown, 404, "order_not_found")
            bad_limit = await order.client.get(f"{path}?limit=0", headers=order.as_admin())
            assert_refused(bad_limit, 422, "validation_error")


def test_the_openapi_document_describes_the_relayed_reads_and_their_errors() -> None:
    document = build_app(Settings()).openapi()
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for relayed in RELAYED:
        operation = document["paths"][f"/orders/{{order_id}}/{relayed}"]["get"]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert set(operation["responses"]) >= {"200", "401", "403", "404", "422", "503"}
        for code in ("401", "403", "404", "422", "503"):
            content = operation["responses"][code]["content"]["application/json"]
            assert content["schema"] == error_schema, (relayed, code)
    assert "/admin" not in document["paths"]
