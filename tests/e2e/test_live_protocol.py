"""The live production test protocol, automated.

Order 4366b956-4229-4369-91e3-51e41e56c64a goes confirmed → preparing → ready →
out_for_delivery over the HTTP API with all three services running as processes. Each change
must succeed, send exactly one email (counted by Message-ID at the SMTP server), leave one
communication row with its own dedupe key, and appear in the audit trail. Then, with the SMTP
server down, one more change must still succeed at once; its email follows when SMTP returns.
A refused change in between must be answered 409 and still appear in the audit trail.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from devstack import infra
from devstack.smtp_sink import read_messages
from devstack.stack import Stack
from devstack.waiting import wait_until

ORDER_ID = UUID("4366b956-4229-4369-91e3-51e41e56c64a")
PROTOCOL = ["confirmed", "preparing", "ready", "out_for_delivery"]
CUSTOMER = {"name": "Live Protocol", "email": "live.protocol@example.com"}


def message_ids(stack: Stack) -> Counter[str]:
    return Counter(str(message["Message-ID"]) for message in read_messages(stack.maildir))


async def communication_rows(databases: infra.TestDatabases) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(databases.dsn("notifier"))
    try:
        return list(
            await connection.fetch(
                "SELECT event_id, dedupe_key, status FROM communication_events"
                " WHERE order_id = $1 ORDER BY created_at",
                ORDER_ID,
            )
        )
    finally:
        await connection.close()


async def audit_timeline(audit_api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await audit_api.get(f"/audit/orders/{ORDER_ID}/timeline")
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def history_event_ids(order_api: httpx.AsyncClient) -> list[str]:
    response = await order_api.get(f"/orders/{ORDER_ID}/history")
    response.raise_for_status()
    return [item["event_id"] for item in response.json()["items"]]


async def test_live_protocol(
    stack: Stack,
    e2e_databases: infra.TestDatabases,
    order_api: httpx.AsyncClient,
    audit_api: httpx.AsyncClient,
) -> None:
    created = await order_api.post("/orders", json={"id": str(ORDER_ID), "customer": CUSTOMER})
    assert created.status_code == 201, created.text

    for version, status in enumerate(PROTOCOL, start=2):
        changed = await order_api.post(f"/orders/{ORDER_ID}/status", json={"status": status})
        assert changed.status_code == 200, f"change to {status} failed: {changed.text}"
        assert (changed.json()["status"], changed.json()["version"]) == (status, version)

    # One communication per change, each under its own dedupe key, all sent.
    rows = await wait_until(
        lambda: communication_rows(e2e_databases),
        lambda rows: len(rows) >= len(PROTOCOL) and all(r["status"] == "sent" for r in rows),
        within=60,
        what="a sent communication per change",
    )
    assert len(rows) == len(PROTOCOL), rows
    keys = [row["dedupe_key"] for row in rows]
    assert len(set(keys)) == len(PROTOCOL), f"dedupe keys are not distinct: {keys}"
    change_event_ids = (await history_event_ids(order_api))[1:]  # [0] is the creation
    assert sorted(str(r["event_id"]) for r in rows) == sorted(change_event_ids)

    # Exactly one email per change reached the SMTP server, its Message-ID from its key.
    received = message_ids(stack)
    for key in keys:
        matching = {mid: n for mid, n in received.items() if key in mid}
        assert list(matching.values()) == [1], f"key {key}: emails by Message-ID {matching}"
    assert sum(received.values()) == len(PROTOCOL), received

    # A refused change: answered 409, and recorded as an attempt in the audit trail.
    refused = await order_api.post(f"/orders/{ORDER_ID}/status", json={"status": "confirmed"})
    assert refused.status_code == 409, refused.text

    # The audit trail holds the creation, every change, the refused attempt and every email
    # sent, each exactly once, the changes in order.
    all_event_ids = await history_event_ids(order_api)
    entries = await wait_until(
        lambda: audit_timeline(audit_api),
        lambda items: (
            all(event_id in {i["event_id"] for i in items} for event_id in all_event_ids)
            and sum(i["action"] == "order.command_rejected" for i in items) >= 1
            and sum(i["action"] == "communication.sent" for i in items) >= len(PROTOCOL)
        ),
        within=60,
        what="audit entries for every change, the refusal and every email",
    )
    counts = Counter(item["event_id"] for item in entries)
    assert all(n == 1 for n in counts.values()), counts
    changes = [i["after"]["status"] for i in entries if i["action"] == "order.status_changed"]
    assert changes == PROTOCOL
    (rejection,) = [i for i in entries if i["action"] == "order.command_rejected"]
    assert (rejection["actor"], rejection["before"], rejection["after"]) == (
        "dev-admin",
        {"status": "out_for_delivery"},
        {"status": "confirmed"},
    )
    sent_keys = sorted(
        i["details"]["dedupe_key"] for i in entries if i["action"] == "communication.sent"
    )
    assert sent_keys == sorted(keys)
    verified = (await audit_api.get("/audit/verify")).json()
    assert verified["ok"] is True, verified

    # SMTP down: the change still succeeds at once; its email waits, then arrives once.
    stack.processes["smtp-sink"].stop()
    delivered = await order_api.post(
        f"/orders/{ORDER_ID}/status", json={"status": "delivered"}, timeout=5
    )
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "delivered"

    stack.start_smtp_sink()
    rows = await wait_until(
        lambda: communication_rows(e2e_databases),
        lambda rows: len(rows) == len(PROTOCOL) + 1 and all(r["status"] == "sent" for r in rows),
        within=90,
        what="the delivered email to be sent once SMTP is back",
    )
    received = message_ids(stack)
    assert sum(received.values()) == len(PROTOCOL) + 1, received
    assert all(count == 1 for count in received.values()), received
