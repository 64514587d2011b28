"""Credentials across the system, all three services as processes: the order service refuses
a missing or revoked token (401) and a viewer's change (403); the notifier and audit read APIs
refuse a missing or revoked token, checking tokens with the order service; and each refused
attempt on the order service appears in the audit trail with who tried what."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import httpx

from devstack.stack import Stack
from devstack.waiting import wait_until


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def access_refusals(
    audit_api: httpx.AsyncClient, params: dict[str, str]
) -> list[dict[str, Any]]:
    response = await audit_api.get("/audit", params={"action": "access.refused", **params})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_refused_everywhere_and_every_refused_change_is_in_the_audit_trail(
    stack: Stack, order_api: httpx.AsyncClient, audit_api: httpx.AsyncClient
) -> None:
    viewer = await asyncio.to_thread(stack.issue_token, "e2e-viewer", "viewer")
    revoked = await asyncio.to_thread(stack.issue_token, "e2e-revoked", "admin")
    await asyncio.to_thread(stack.revoke_tokens, "e2e-revoked")
    created = await order_api.post("/orders", json={"customer": {"name": "Eve"}})
    assert created.status_code == 201, created.text
    order_id = UUID(created.json()["id"])
    change = f"/orders/{order_id}/status"

    async with httpx.AsyncClient(base_url=stack.url("order"), timeout=10) as anyone:
        no_token = await anyone.post(change, json={"status": "confirmed"})
        by_revoked = await anyone.post(
            change, json={"status": "confirmed"}, headers=bearer(revoked)
        )
        by_viewer = await anyone.post(change, json={"status": "confirmed"}, headers=bearer(viewer))
        viewer_reads = await anyone.get(f"/orders/{order_id}", headers=bearer(viewer))
    assert [r.status_code for r in (no_token, by_revoked, by_viewer)] == [401, 401, 403]
    assert viewer_reads.json()["status"] == "pending"

    reads = {
        "notifier": f"/communications?order_id={order_id}",
        "audit": f"/audit/orders/{order_id}/timeline",
    }
    for service, path in reads.items():
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=10) as anyone:
            answers = [
                await anyone.get(path),
                await anyone.get(path, headers=bearer(revoked)),
                await anyone.get(path, headers=bearer(viewer)),
            ]
        assert [r.status_code for r in answers] == [401, 401, 200], (service, answers[0].text)
        assert answers[0].json()["error"]["code"] == "unauthenticated"

    entries = await wait_until(
        lambda: access_refusals(audit_api, {"entity_id": str(order_id)}),
        lambda items: len(items) >= 3,
        within=60,
        what="audit entries of the three refused changes",
    )
    recorded = sorted((e["actor"], e["details"]["code"], e["reason"]) for e in entries)
    assert recorded == [
        ("anonymous", "unauthenticated", f"POST {change} refused: no bearer token"),
        (
            "e2e-revoked",
            "unauthenticated",
            f"POST {change} refused: revoked token of 'e2e-revoked'",
        ),
        ("e2e-viewer", "forbidden", f"POST {change} refused: role 'viewer' may not change"),
    ]
    assert {(e["entity_type"], e["source"]) for e in entries} == {("order", "order")}

    # The revoked token shown to the notifier and the audit service was refused by the order
    # service that checked it, and that is on record too.
    checked = await wait_until(
        lambda: access_refusals(audit_api, {"actor": "e2e-revoked"}),
        lambda items: sum(e["entity_type"] == "request" for e in items) >= 2,
        within=60,
        what="the refused checks of the revoked token",
    )
    assert {e["reason"] for e in checked if e["entity_type"] == "request"} == {
        "GET /auth/whoami refused: revoked token of 'e2e-revoked'"
    }
    verified = (await audit_api.get("/audit/verify")).json()
    assert verified["ok"] is True, verified
