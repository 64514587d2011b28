"""The order service against real PostgreSQL and Kafka: HTTP changes, outbox to orders.events."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from sqlalchemy import text

from contracts import Actor, OrderStatus, allowed_next, is_allowed
from devstack import infra
from devstack.waiting import wait_until
from order import service as order_service
from order.adapters.schema import SchemaBehind
from order.adapters.unit_of_work import UnitOfWork, UnitOfWorkFactory
from order.app import build_app, build_engine
from order.config import Settings as OrderSettings
from tests.integration.conftest import (
    OrderService,
    TopicReader,
    order_settings,
    running_order_service,
)

CUSTOMER = {"name": "Grace", "email": "grace@example.com"}
LOCK_WAITS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@pytest.fixture
def own_databases() -> Iterator[infra.TestDatabases]:
    """Databases of the test's own, for a service configured unlike the session's."""
    created = infra.create_test_databases("own")
    yield created
    infra.drop_test_databases(created)


async def create_order(svc: OrderService) -> UUID:
    response = await svc.client.post("/orders", json={"customer": CUSTOMER}, headers=svc.as_admin())
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def change(svc: OrderService, order_id: UUID, status: str, **headers: str) -> Any:
    return await svc.client.post(
        f"/orders/{order_id}/status",
        json={"status": status},
        headers={**svc.as_admin(), **headers},
    )


async def test_changes_reach_orders_events_in_order(
    order_service_app: OrderService, order_events: TopicReader
) -> None:
    order_id = await create_order(order_service_app)
    for status in ("confirmed", "preparing", "ready"):
        assert (await change(order_service_app, order_id, status)).status_code == 200

    events = await order_events.values_for(str(order_id), 4)

    assert [(e["type"], e["version"]) for e in events] == [
        ("OrderCreated", 1),
        ("OrderStatusChanged", 2),
        ("OrderStatusChanged", 3),
        ("OrderStatusChanged", 4),
    ]
    assert [(e["from"], e["to"]) for e in events[1:]] == [
        ("pending", "confirmed"),
        ("confirmed", "preparing"),
        ("preparing", "ready"),
    ]
    assert {e["actor"]["id"] for e in events} == {"it-admin"}


async def test_same_status_is_a_no_op_without_an_event(
    order_service_app: OrderService, order_events: TopicReader
) -> None:
    order_id = await create_order(order_service_app)
    first = await change(order_service_app, order_id, "confirmed")
    again = await change(order_service_app, order_id, "confirmed")
    after = await change(order_service_app, order_id, "preparing")

    assert (first.status_code, again.status_code, after.status_code) == (200, 200, 200)
    assert again.json()["version"] == first.json()["version"] == 2
    events = await order_events.values_for(str(order_id), 3)
    assert [e["version"] for e in events] == [1, 2, 3]


async def test_forbidden_transition_is_409_naming_current_and_allowed(
    order_service_app: OrderService,
) -> None:
    order_id = await create_order(order_service_app)
    await change(order_service_app, order_id, "confirmed")

    response = await change(order_service_app, order_id, "ready")

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "transition_not_allowed"
    assert error["details"] == {
        "current_status": "confirmed",
        "requested_status": "ready",
        "allowed_next": ["preparing", "cancelled"],
    }


async def test_unknown_status_is_422_listing_allowed_values(
    order_service_app: OrderService,
) -> None:
    order_id = await create_order(order_service_app)

    response = await change(order_service_app, order_id, "teleported")

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_status"
    assert "pending" in error["details"]["allowed_values"]
    assert "out_for_delivery" in error["details"]["allowed_values"]


async def test_stale_if_match_is_412(order_service_app: OrderService) -> None:
    order_id = await create_order(order_service_app)
    await change(order_service_app, order_id, "confirmed")

    response = await change(order_service_app, order_id, "preparing", **{"If-Match": "1"})

    assert response.status_code == 412
    assert response.json()["error"]["details"] == {"expected_version": 1, "current_version": 2}


async def test_unknown_order_is_404(order_service_app: OrderService) -> None:
    response = await change(order_service_app, uuid4(), "confirmed")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "order_not_found"


async def test_credentials_are_required_and_roles_enforced(
    order_service_app: OrderService,
) -> None:
    order_id = await create_order(order_service_app)
    client = order_service_app.client

    anonymous = await client.get(f"/orders/{order_id}")
    bogus = await client.get(f"/orders/{order_id}", headers={"Authorization": "Bearer nope"})
    viewer_reads = await client.get(f"/orders/{order_id}", headers=order_service_app.as_viewer())
    viewer_changes = await client.post(
        f"/orders/{order_id}/status",
        json={"status": "confirmed"},
        headers=order_service_app.as_viewer(),
    )

    assert (anonymous.status_code, bogus.status_code) == (401, 401)
    assert viewer_reads.status_code == 200
    assert viewer_changes.status_code == 403
    assert viewer_changes.json()["error"]["code"] == "forbidden"


async def test_history_lists_who_when_from_to(order_service_app: OrderService) -> None:
    order_id = await create_order(order_service_app)
    await order_service_app.client.post(
        f"/orders/{order_id}/status",
        json={"status": "confirmed", "reason": "paid"},
        headers=order_service_app.as_admin(),
    )

    response = await order_service_app.client.get(
        f"/orders/{order_id}/history", headers=order_service_app.as_viewer()
    )

    items = response.json()["items"]
    assert [(i["from"], i["to"], i["actor"], i["reason"]) for i in items] == [
        (None, "pending", "it-admin", None),
        ("pending", "confirmed", "it-admin", "paid"),
    ]


async def test_list_filters_by_status_and_pages_with_a_cursor(
    order_service_app: OrderService,
) -> None:
    created = [await create_order(order_service_app) for _ in range(5)]
    for order_id in created[:3]:
        await change(order_service_app, order_id, "confirmed")
    client, auth = order_service_app.client, order_service_app.as_viewer()

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"status": "confirmed", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/orders", params=params, headers=auth)).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        assert {item["status"] for item in page["items"]} <= {"confirmed"}
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert {str(order_id) for order_id in created[:3]} <= set(seen)
    assert not {str(order_id) for order_id in created[3:]} & set(seen)
    assert len(seen) == len(set(seen))


async def test_a_forged_cursor_is_422(order_service_app: OrderService) -> None:
    response = await order_service_app.client.get(
        "/orders", params={"cursor": "bm9wZQ=="}, headers=order_service_app.as_viewer()
    )

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_cursor"


async def test_a_retried_post_with_its_idempotency_key_replays_the_first_answer(
    order_service_app: OrderService, order_events: TopicReader
) -> None:
    order_id = await create_order(order_service_app)
    key = {"Idempotency-Key": f"confirm-{order_id}"}

    first = await change(order_service_app, order_id, "confirmed", **key)
    await change(order_service_app, order_id, "preparing")
    retried = await change(order_service_app, order_id, "confirmed", **key)

    assert (first.status_code, retried.status_code) == (200, 200)
    assert retried.json() == first.json()
    assert retried.headers["Idempotent-Replayed"] == "true"
    events = await order_events.values_for(str(order_id), 3)
    assert [e["version"] for e in events] == [1, 2, 3]


async def test_concurrent_duplicates_apply_once(
    order_service_app: OrderService, order_events: TopicReader
) -> None:
    key = {"Idempotency-Key": str(uuid4())}
    order_id = str(uuid4())
    body = {"id": order_id, "customer": CUSTOMER}
    headers = {**order_service_app.as_admin(), **key}

    responses = await asyncio.gather(
        *(order_service_app.client.post("/orders", json=body, headers=headers) for _ in range(10))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 9
    events = await order_events.values_for(order_id, 1)
    assert len(events) == 1


async def test_an_idempotency_key_reused_for_another_request_is_422(
    order_service_app: OrderService,
) -> None:
    order_id = await create_order(order_service_app)
    key = {"Idempotency-Key": f"reuse-{order_id}"}
    await change(order_service_app, order_id, "confirmed", **key)

    response = await change(order_service_app, order_id, "cancelled", **key)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"


async def test_idempotency_keys_past_the_retention_are_forgotten_and_a_reuse_is_new(
    order_service_app: OrderService, databases: infra.TestDatabases
) -> None:
    order_id = await create_order(order_service_app)
    key = {"Idempotency-Key": f"expiring-{order_id}"}
    await change(order_service_app, order_id, "confirmed", **key)
    # Command ids claimed 10, 9, 9 and 7 days ago (no other test's keys are older than minutes).
    claimed = [(f"aged-{order_id}-{n}", days) for n, days in enumerate((10, 9, 9, 7))]
    engine = build_engine(OrderSettings(database_url=databases.urls["order"]))
    admin = await asyncpg.connect(databases.dsn("order"))
    try:
        await admin.execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '9 days' WHERE key = $1",
            key["Idempotency-Key"],
        )
        await admin.executemany(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at) "
            "VALUES ('orders.commands', $1, 'f', now() - make_interval(days => $2))",
            claimed,
        )
        forgotten = await order_service.forget_expired_idempotency_keys(
            UnitOfWorkFactory(engine), timedelta(days=8), batch=2
        )
        kept = await admin.fetch(
            "SELECT key FROM idempotency_keys WHERE key LIKE $1", f"%{order_id}%"
        )
    finally:
        await admin.close()
        await engine.dispose()
    reused = await change(order_service_app, order_id, "preparing", **key)

    assert forgotten == 4
    assert [row["key"] for row in kept] == [f"aged-{order_id}-3"]
    assert (reused.status_code, reused.json()["version"]) == (200, 3)


async def test_the_service_forgets_expired_idempotency_keys_by_itself(
    kafka_bootstrap: str, own_databases: infra.TestDatabases
) -> None:
    settings = order_settings(
        own_databases,
        kafka_bootstrap,
        idempotency_retention_hours=1,
        idempotency_purge_interval_seconds=0.2,
    )
    admin = await asyncpg.connect(own_databases.dsn("order"))

    async def keys() -> list[str]:
        return [row["key"] for row in await admin.fetch("SELECT key FROM idempotency_keys")]

    try:
        async with running_order_service(settings) as svc:
            order_id = await create_order(svc)
            await change(svc, order_id, "confirmed", **{"Idempotency-Key": "old"})
            await change(svc, order_id, "preparing", **{"Idempotency-Key": "recent"})
            await admin.execute(
                "UPDATE idempotency_keys SET created_at = now() - interval '61 minutes' "
                "WHERE key = 'old'"
            )
            await wait_until(keys, lambda k: k == ["recent"], within=10, what="'old' forgotten")
    finally:
        await admin.close()


async def test_fifty_concurrent_changes_from_one_version_have_one_winner(
    order_service_app: OrderService, order_events: TopicReader
) -> None:
    order_id = await create_order(order_service_app)
    targets = ["confirmed", "cancelled"] * 25

    responses = await asyncio.gather(
        *(change(order_service_app, order_id, target, **{"If-Match": "1"}) for target in targets)
    )

    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 412}, codes
    winners = {(r.json()["status"], r.json()["version"]) for r in responses if r.status_code == 200}
    assert len(winners) == 1, winners  # the rest either lost (412) or asked for the winner's status
    (winning_status, winning_version) = winners.pop()
    assert winning_version == 2
    history = (
        await order_service_app.client.get(
            f"/orders/{order_id}/history", headers=order_service_app.as_viewer()
        )
    ).json()["items"]
    assert [(h["version"], h["to"]) for h in history] == [(1, "pending"), (2, winning_status)]
    events = await order_events.values_for(str(order_id), 2)
    assert [e["version"] for e in events] == [1, 2]


async def test_a_change_that_lost_a_race_is_validated_again_against_the_winner(
    order_service_app: OrderService, order_events: TopicReader, databases: infra.TestDatabases
) -> None:
    order_id = await create_order(order_service_app)
    engine = build_engine(OrderSettings(database_url=databases.urls["order"]))
    holding, release = asyncio.Event(), asyncio.Event()

    async def confirm_and_hold(uow: UnitOfWork) -> None:
        await order_service.change_order_status_in(
            uow, order_id, OrderStatus.CONFIRMED, actor=Actor(id="it-racer", role="admin")
        )
        holding.set()  # its transaction keeps the order's row locked until released
        await release.wait()

    async def waiting_for_a_lock() -> int:
        async with engine.connect() as connection:
            waiting = await connection.execute(text(LOCK_WAITS))
            return int(waiting.scalar_one())

    try:
        winner = asyncio.create_task(UnitOfWorkFactory(engine).run(confirm_and_hold))
        await asyncio.wait_for(holding.wait(), timeout=10)
        # It reads the order as it was before the winner's commit, then meets the row lock.
        loser = asyncio.create_task(change(order_service_app, order_id, "cancelled"))
        await wait_until(waiting_for_a_lock, lambda n: n >= 1, within=10, what="a lock wait")
        release.set()
        await winner
        response = await loser
    finally:
        release.set()
        await engine.dispose()

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["version"]) == ("cancelled", 3)
    history = (
        await order_service_app.client.get(
            f"/orders/{order_id}/history", headers=order_service_app.as_viewer()
        )
    ).json()["items"]
    assert [(h["version"], h["from"], h["to"]) for h in history] == [
        (1, None, "pending"),
        (2, "pending", "confirmed"),
        (3, "confirmed", "cancelled"),
    ]
    events = await order_events.values_for(str(order_id), 3)
    assert [e["version"] for e in events] == [1, 2, 3]


async def test_with_every_api_connection_busy_requests_get_503_and_the_relay_still_announces(
    kafka_bootstrap: str, own_databases: infra.TestDatabases, order_events: TopicReader
) -> None:
    settings = order_settings(
        own_databases,
        kafka_bootstrap,
        database_pool_size=1,
        database_pool_overflow=0,
        database_pool_wait_seconds=0.5,
    )
    locker = build_engine(OrderSettings(database_url=own_databases.urls["order"]))

    async def waiting_for_a_lock() -> int:
        async with locker.connect() as connection:
            return int((await connection.execute(text(LOCK_WAITS))).scalar_one())

    try:
        async with running_order_service(settings) as svc:
            held, other = await create_order(svc), await create_order(svc)
            upstream = await create_order(svc)
            async with locker.connect() as connection, connection.begin():
                await connection.execute(
                    text("SELECT 1 FROM orders WHERE id = :id FOR UPDATE"), {"id": held}
                )
                # This change waits for the row lock on the service's only connection.
                blocked = asyncio.create_task(change(svc, held, "confirmed"))
                await wait_until(waiting_for_a_lock, lambda n: n >= 1, within=10, what="a wait")
                busy_read = await svc.client.get(f"/orders/{other}", headers=svc.as_viewer())
                busy_change = await change(svc, other, "confirmed", **{"Idempotency-Key": "k1"})
                # A change committed elsewhere meanwhile: the relay's connections are its own.
                await UnitOfWorkFactory(locker).run(
                    lambda uow: order_service.change_order_status_in(
                        uow, upstream, OrderStatus.CONFIRMED, actor=Actor(id="it", role="admin")
                    )
                )
                announced = await order_events.values_for(str(upstream), 2)
            answered = await blocked  # the lock is gone with the transaction
            after = await svc.client.get(f"/orders/{other}", headers=svc.as_viewer())
            retried = await change(svc, other, "confirmed", **{"Idempotency-Key": "k1"})
    finally:
        await locker.dispose()

    for busy in (busy_read, busy_change):
        assert (busy.status_code, busy.json()["error"]["code"]) == (503, "database_busy")
        assert busy.headers["Retry-After"] == "1"
    assert (answered.status_code, answered.json()["version"]) == (200, 2)
    assert after.json()["version"] == 1
    assert (retried.status_code, retried.json()["version"]) == (200, 2)
    assert [e["version"] for e in announced] == [1, 2]


async def test_the_service_refuses_a_database_whose_schema_is_behind(
    kafka_bootstrap: str,
) -> None:
    created = infra.create_test_databases("behind")
    try:
        settings = OrderSettings(
            database_url=created.urls["order"], kafka_bootstrap_servers=kafka_bootstrap
        )
        app = build_app(settings)
        with pytest.raises(SchemaBehind, match="migrate"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        infra.drop_test_databases(created)


def test_the_openapi_document_describes_every_endpoint_and_its_errors() -> None:
    document = build_app(OrderSettings()).openapi()
    operations = {
        (method.upper(), path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }

    expected_errors = {
        ("POST", "/orders"): {"401", "403", "409", "422"},
        ("GET", "/orders"): {"401", "403", "422"},
        ("GET", "/orders/{order_id}"): {"401", "403", "404", "422"},
        ("POST", "/orders/{order_id}/status"): {"401", "403", "404", "409", "412", "422"},
        ("GET", "/orders/{order_id}/history"): {"401", "403", "404", "422"},
    }
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for endpoint, codes in expected_errors.items():
        responses = operations[endpoint]["responses"]
        assert codes <= set(responses), endpoint
        for code in codes:
            content = responses[code]["content"]["application/json"]
            assert content["schema"] == error_schema, (endpoint, code)
    assert "ChangeStatusRequest" in document["components"]["schemas"]


async def test_unknown_routes_and_methods_answer_in_the_error_shape(
    order_service_app: OrderService,
) -> None:
    client = order_service_app.client

    missing = await client.get("/nowhere")
    wrong_method = await client.delete("/orders", headers=order_service_app.as_admin())

    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (
        405,
        "method_not_allowed",
    )


async def test_a_refused_change_over_http_is_announced_for_the_audit(
    order_service_app: OrderService, read_topic: Callable[[str], Awaitable[TopicReader]]
) -> None:
    results = await read_topic("orders.command-results")
    order_id = await create_order(order_service_app)

    refused = await change(order_service_app, order_id, "delivered")

    assert refused.status_code == 409
    announced = await results.values_for(str(order_id), 1)
    assert announced[0]["type"] == "CommandRejected"
    assert announced[0]["code"] == "transition_not_allowed"
    assert (announced[0]["current_status"], announced[0]["requested_status"]) == (
        "pending",
        "delivered",
    )
    assert announced[0]["actor"] == {"id": "it-admin", "role": "admin"}


PATH_TO = {
    OrderStatus.PENDING: [],
    OrderStatus.CONFIRMED: ["confirmed"],
    OrderStatus.PREPARING: ["confirmed", "preparing"],
    OrderStatus.READY: ["confirmed", "preparing", "ready"],
    OrderStatus.OUT_FOR_DELIVERY: ["confirmed", "preparing", "ready", "out_for_delivery"],
    OrderStatus.DELIVERED: ["confirmed", "preparing", "ready", "out_for_delivery", "delivered"],
    OrderStatus.CANCELLED: ["cancelled"],
}


@pytest.mark.parametrize(
    ("current", "target"), [(a, b) for a in OrderStatus for b in OrderStatus if a != b]
)
async def test_every_transition_rule_holds_over_http(
    order_service_app: OrderService, current: OrderStatus, target: OrderStatus
) -> None:
    order_id = await create_order(order_service_app)
    for step in PATH_TO[current]:
        assert (await change(order_service_app, order_id, step)).status_code == 200

    response = await change(order_service_app, order_id, target.value)

    if is_allowed(current, target):
        assert response.status_code == 200, response.text
        assert response.json()["status"] == target
    else:
        assert response.status_code == 409, response.text
        assert response.json()["error"]["details"]["allowed_next"] == allowed_next(current)


async def test_a_value_the_database_cannot_store_is_422_not_500(
    order_service_app: OrderService,
) -> None:
    response = await order_service_app.client.post(
        "/orders",
        json={"customer": {"name": "Nul\u0000Byte"}},
        headers=order_service_app.as_admin(),
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "unstorable_value"


async def test_a_correlation_id_longer_than_the_events_carry_is_422(
    order_service_app: OrderService,
) -> None:
    svc = order_service_app
    body = {"customer": {"name": "Cid"}}
    too_long = {**svc.as_admin(), "X-Correlation-Id": "c" * 201}
    refused = await svc.client.post("/orders", json=body, headers=too_long)
    assert refused.status_code == 422, refused.text
    assert set(refused.json()["error"]) == {"code", "message", "details"}

    longest = {**svc.as_admin(), "X-Correlation-Id": "c" * 200}
    created = await svc.client.post("/orders", json=body, headers=longest)
    assert created.status_code == 201, created.text
    changed = await svc.client.post(
        f"/orders/{created.json()['id']}/status", json={"status": "confirmed"}, headers=too_long
    )
    assert changed.status_code == 422, changed.text
