"""The order service's credentials against real PostgreSQL and Kafka: GET /auth/whoami, and
every request refused for its credentials announced on orders.command-results (for the audit
trail) with who tried what."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from devstack import infra
from devstack.metrics import Scrape
from devstack.waiting import wait_until
from order import service as order_service
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.app import build_app, build_engine
from order.config import Settings as OrderSettings
from order.domain.auth import Role
from tests.integration.conftest import OrderService, TopicReader, terminated

pytestmark = pytest.mark.integration


@pytest.fixture
async def order_tokens(databases: infra.TestDatabases) -> AsyncIterator[UnitOfWorkFactory]:
    """Issues and revokes tokens in the database of `order_service_app`."""
    engine = build_engine(OrderSettings(database_url=databases.urls["order"]))
    yield UnitOfWorkFactory(engine)
    await engine.dispose()


async def revoked_token(tokens: UnitOfWorkFactory, name: str) -> str:
    token = await order_service.issue_token(tokens, name, Role.ADMIN)
    assert await order_service.revoke_tokens(tokens, name) == 1
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_order(svc: OrderService) -> UUID:
    created = await svc.client.post(
        "/orders", json={"customer": {"name": "Ida"}}, headers=svc.as_admin()
    )
    assert created.status_code == 201, created.text
    return UUID(created.json()["id"])


def assert_refused(response: httpx.Response, status_code: int, code: str) -> None:
    assert response.status_code == status_code, response.text
    error = response.json()["error"]
    assert (error["code"], type(error["message"]), error["details"]) == (code, str, {})


async def test_whoami_names_the_token_holder_and_role(
    order_service_app: OrderService, order_tokens: UnitOfWorkFactory
) -> None:
    client = order_service_app.client
    revoked = await revoked_token(order_tokens, f"gone-{uuid4().hex[:8]}")

    admin = await client.get("/auth/whoami", headers=order_service_app.as_admin())
    viewer = await client.get("/auth/whoami", headers=order_service_app.as_viewer())
    anonymous = await client.get("/auth/whoami")
    unknown = await client.get("/auth/whoami", headers=bearer("not-a-token-of-ours"))
    refused_revoked = await client.get("/auth/whoami", headers=bearer(revoked))

    assert admin.json() == {"id": "it-admin", "role": "admin"}
    assert viewer.json() == {"id": "it-viewer", "role": "viewer"}
    for refused in (anonymous, unknown, refused_revoked):
        assert_refused(refused, 401, "unauthenticated")
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    # The caller cannot tell a revoked token from one that never existed.
    assert unknown.json() == refused_revoked.json()


async def test_every_refused_request_is_announced_with_who_tried_what(
    order_service_app: OrderService,
    order_tokens: UnitOfWorkFactory,
    read_topic: Callable[[str], Awaitable[TopicReader]],
) -> None:
    results = await read_topic("orders.command-results")
    client = order_service_app.client
    order_id = await create_order(order_service_app)
    holder = f"gone-{uuid4().hex[:8]}"
    revoked = await revoked_token(order_tokens, holder)
    change = {"status": "confirmed"}
    path = f"/orders/{order_id}/status"

    anonymous = await client.post(path, json=change, headers={"X-Correlation-Id": "corr-1"})
    unknown = await client.get(f"/orders/{order_id}", headers=bearer("nope"))
    by_revoked = await client.post(path, json=change, headers=bearer(revoked))
    by_viewer = await client.post(path, json=change, headers=order_service_app.as_viewer())

    assert_refused(anonymous, 401, "unauthenticated")
    assert_refused(unknown, 401, "unauthenticated")
    assert_refused(by_revoked, 401, "unauthenticated")
    assert_refused(by_viewer, 403, "forbidden")
    # Nothing changed.
    order = await client.get(f"/orders/{order_id}", headers=order_service_app.as_viewer())
    assert (order.json()["status"], order.json()["version"]) == ("pending", 1)

    announced = await results.values_for(str(order_id), 4)
    assert {a["type"] for a in announced} == {"CommandRejected"}
    assert len({a["command_id"] for a in announced}) == 4
    assert all(a["order_id"] == str(order_id) for a in announced)
    seen = [(a["code"], a["actor"], a["reason"]) for a in announced]
    assert seen == [
        (
            "unauthenticated",
            {"id": "anonymous", "role": "anonymous"},
            f"POST {path} refused: no bearer token",
        ),
        (
            "unauthenticated",
            {"id": "anonymous", "role": "anonymous"},
            f"GET /orders/{order_id} refused: unknown bearer token",
        ),
        (
            "unauthenticated",
            {"id": holder, "role": "admin"},
            f"POST {path} refused: revoked token of '{holder}'",
        ),
        (
            "forbidden",
            {"id": "it-viewer", "role": "viewer"},
            f"POST {path} refused: role 'viewer' may not change",
        ),
    ]
    assert announced[0]["correlation_id"] == "corr-1"


async def answers_from_memory(client: httpx.AsyncClient) -> float:
    scrape = Scrape((await client.get("/metrics")).text)
    return scrape.value("order_token_lookups_total", source="memory") or 0.0


async def kept_in_memory(client: httpx.AsyncClient, token: str) -> None:
    """Use `token` until the service answers it from memory (once its listener is checked)."""

    async def whoami_from_memory() -> bool:
        before = await answers_from_memory(client)
        assert (await client.get("/auth/whoami", headers=bearer(token))).status_code == 200
        return await answers_from_memory(client) == before + 1

    await wait_until(whoami_from_memory, bool, within=10, what="the token answered from memory")


async def refused_within(client: httpx.AsyncClient, token: str, seconds: float) -> None:
    await wait_until(
        lambda: client.get("/auth/whoami", headers=bearer(token)),
        lambda response: response.status_code == 401,
        within=seconds,
        what="the revoked token refused",
    )


async def test_a_revocation_holds_for_a_token_answered_from_memory(
    order_service_app: OrderService, order_tokens: UnitOfWorkFactory
) -> None:
    client = order_service_app.client
    name = f"kept-{uuid4().hex[:8]}"
    token = await order_service.issue_token(order_tokens, name, Role.ADMIN)
    await kept_in_memory(client, token)

    # Revoked elsewhere (as by `order token revoke`): its commit's notification reaches the
    # service, which has no other way to know.
    assert await order_service.revoke_tokens(order_tokens, name) == 1

    await refused_within(client, token, seconds=5)


async def test_a_lost_listener_forgets_every_token_in_memory(
    order_service_app: OrderService, order_tokens: UnitOfWorkFactory, databases: infra.TestDatabases
) -> None:
    """A revocation whose notification never arrived (sent while the listener was away) is
    honoured once the listener is found lost."""
    client = order_service_app.client
    name = f"unheard-{uuid4().hex[:8]}"
    token = await order_service.issue_token(order_tokens, name, Role.ADMIN)
    await kept_in_memory(client, token)
    owner = await asyncpg.connect(databases.dsn("order"))
    try:
        await owner.execute("ALTER TABLE api_tokens DISABLE TRIGGER api_tokens_changed")
        try:
            assert await order_service.revoke_tokens(order_tokens, name) == 1
        finally:
            await owner.execute("ALTER TABLE api_tokens ENABLE TRIGGER api_tokens_changed")
        unheard = await client.get("/auth/whoami", headers=bearer(token))
        assert unheard.status_code == 200, "answered from memory: no notification was sent"

        listener = await owner.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'order-token-listener' "
            "AND datname = current_database()"
        )
        await terminated(databases.urls["order"], listener)
    finally:
        await owner.close()

    await refused_within(client, token, seconds=5)


async def refusals_marked(results: TopicReader, marker: str) -> list[tuple[str, Any]]:
    """(key, value) of the announced results that hold `marker`, once all have arrived."""
    await results.all_values()
    return [
        (r.key.decode(), json.loads(r.value)) for r in results.records if marker.encode() in r.value
    ]


async def test_a_refused_request_naming_no_order_is_announced_under_its_own_id(
    order_service_app: OrderService, read_topic: Callable[[str], Awaitable[TopicReader]]
) -> None:
    results = await read_topic("orders.command-results")
    marker = uuid4().hex

    created = await order_service_app.client.post(
        "/orders",
        json={"customer": {"name": "Ida"}},
        headers={**order_service_app.as_viewer(), "X-Correlation-Id": marker},
    )

    assert_refused(created, 403, "forbidden")
    ((key, announced),) = await refusals_marked(results, marker)
    assert announced["order_id"] is None
    assert key == announced["command_id"]
    assert announced["reason"] == "POST /orders refused: role 'viewer' may not change"


async def test_a_path_that_cannot_be_stored_as_is_still_gets_a_401_and_is_announced(
    order_service_app: OrderService, read_topic: Callable[[str], Awaitable[TopicReader]]
) -> None:
    results = await read_topic("orders.command-results")
    marker = uuid4().hex

    refused = await order_service_app.client.get(f"/orders/{marker}%00\u00e9/history")

    assert_refused(refused, 401, "unauthenticated")
    ((_, announced),) = await refusals_marked(results, marker)
    assert announced["reason"] == f"GET /orders/{marker}%00%C3%A9/history refused: no bearer token"
    assert announced["order_id"] is None


def test_the_openapi_document_describes_whoami_and_the_bearer_scheme() -> None:
    document = build_app(OrderSettings()).openapi()

    whoami = document["paths"]["/auth/whoami"]["get"]
    assert whoami["security"] == [{"HTTPBearer": []}]
    assert set(whoami["responses"]) >= {"200", "401"}
    assert whoami["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, methods in document["paths"].items():
        for operation in methods.values():
            if not path.startswith("/health"):
                assert operation.get("security") == [{"HTTPBearer": []}], path
