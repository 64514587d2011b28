"""Steady load, and the checks every chaos scenario ends with.

The load walks orders through their lifecycle over HTTP at a fixed rate and records every
answer. Afterwards the checks compare what was accepted with what every consumer made of it:
each accepted change once on orders.events and in per-order order, one email per change at
the SMTP server (by Message-ID), an audit entry per change and a chain that verifies.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any
from uuid import UUID

import httpx
from aiokafka import AIOKafkaConsumer

from devstack.smtp_sink import read_messages
from devstack.stack import Stack
from devstack.waiting import wait_until

LIFECYCLE = ["confirmed", "preparing", "ready", "out_for_delivery", "delivered"]


@dataclass
class Answer:
    order_id: UUID
    target: str
    status_code: int
    started: float  # time.monotonic()
    seconds: float


@dataclass
class SteadyLoad:
    """`rate` status changes per second over HTTP, spread over fresh orders."""

    client: httpx.AsyncClient
    rate: float
    answers: list[Answer] = field(default_factory=list)
    orders: dict[UUID, int] = field(default_factory=dict)  # order -> lifecycle steps taken

    async def new_order(self) -> UUID:
        response = await self.client.post(
            "/orders", json={"customer": {"name": "Chaos", "email": "chaos@example.com"}}
        )
        response.raise_for_status()
        order_id = UUID(response.json()["id"])
        self.orders[order_id] = 0
        return order_id

    async def _step(self, order_id: UUID) -> None:
        target = LIFECYCLE[self.orders[order_id]]
        self.orders[order_id] += 1
        started = time.perf_counter()
        try:
            response = await self.client.post(f"/orders/{order_id}/status", json={"status": target})
            code = response.status_code
        except httpx.HTTPError:
            code = 0
        self.answers.append(
            Answer(order_id, target, code, time.monotonic(), time.perf_counter() - started)
        )

    async def run(self, seconds: float) -> None:
        """Offer load for `seconds`; each change in its own task, so a slow answer shows as
        latency instead of lowering the offered rate."""
        in_flight: set[asyncio.Task[None]] = set()
        deadline = time.monotonic() + seconds
        rng = random.Random(7)
        while time.monotonic() < deadline:
            open_orders = [o for o, step in self.orders.items() if step < len(LIFECYCLE)]
            if len(open_orders) < 10:
                open_orders.append(await self.new_order())
            order_id = rng.choice(open_orders)
            if any(not t.done() and t.get_name() == str(order_id) for t in in_flight):
                await asyncio.sleep(1 / self.rate)
                continue
            task = asyncio.create_task(self._step(order_id), name=str(order_id))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            await asyncio.sleep(1 / self.rate)
        await asyncio.gather(*in_flight)

    async def until_accepted(self, count: int, within: float = 60) -> None:
        """Wait until `count` changes were accepted, so a fault hits a system under load."""

        async def accepted() -> int:
            return len(self.accepted)

        await wait_until(
            accepted, lambda n: n >= count, within=within, what=f"{count} accepted changes"
        )

    @property
    def accepted(self) -> list[Answer]:
        return [a for a in self.answers if a.status_code == 200]

    def p99(self, outside: tuple[float, float] | None = None) -> float:
        """Of every answer, or of those not in flight during `outside` (monotonic times)."""
        return p99_of([a.seconds for a in self.answers if not _overlaps(a, outside)])

    def slowest(self, during: tuple[float, float]) -> float:
        return max((a.seconds for a in self.answers if _overlaps(a, during)), default=0.0)


def p99_of(seconds: Sequence[float]) -> float:
    """The 99th percentile of call durations (0 when there were none)."""
    ordered = sorted(seconds)
    return ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0


def _overlaps(answer: Answer, window: tuple[float, float] | None) -> bool:
    if window is None:
        return False
    answered = answer.started + answer.seconds
    return answer.started < window[1] and answered > window[0]


@dataclass
class Findings:
    scenario: str
    offered: int
    accepted: int
    failed_calls: int  # answered anything but 200, or not at all
    p99_ms: float
    server_errors: int = 0  # of the failed calls, those answered 5xx
    checked: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    stuck: int = 0
    # Emails the SMTP server took twice under one Message-ID: a notifier killed after the
    # server accepted a message and before recording it sends it again when its lease ends.
    # One email per (event, recipient) by Message-ID, as receivers deduplicate; shown, not
    # counted as duplicated.
    resent: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.failed_calls or self.lost or self.duplicated or self.out_of_order or self.stuck
        )

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.offered} | {self.accepted} | {self.failed_calls} | "
            f"{self.server_errors} | {self.p99_ms:.0f} | {self.checked} | {self.lost} | "
            f"{self.duplicated} | {self.out_of_order} | {self.stuck} | {self.resent} |"
        )


TABLE_HEADER = (
    "| scenario | changes offered | accepted | failed calls | 5xx | HTTP p99 ms "
    "| messages checked | lost | duplicated | out of order | stuck "
    "| emails re-sent, same Message-ID |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


async def _order_events(bootstrap: str, orders: set[UUID]) -> dict[UUID, list[dict[str, Any]]]:
    consumer = AIOKafkaConsumer(
        "orders.events", bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
    wanted = {str(order_id).encode(): order_id for order_id in orders}
    try:
        quiet = 0
        while quiet < 3:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches:
                quiet += 1
            for records in batches.values():
                for record in records:
                    if record.key in wanted:
                        found[wanted[record.key]].append(json.loads(record.value))
    finally:
        await consumer.stop()
    return found


async def check(
    stack: Stack,
    load: SteadyLoad,
    scenario: str,
    within: float = 180,
    outage: tuple[float, float] | None = None,
) -> Findings:
    """Wait until every consumer caught up (or `within` passed), then count anomalies. With an
    `outage` the changes must wait through (the database away), HTTP p99 is of the calls
    outside it, and the slowest call during it is noted."""
    accepted = load.accepted
    findings = Findings(
        scenario=scenario,
        offered=len(load.answers),
        accepted=len(accepted),
        failed_calls=sum(a.status_code != 200 for a in load.answers),
        server_errors=sum(a.status_code >= 500 for a in load.answers),
        p99_ms=load.p99(outside=outage) * 1000,
    )
    if outage is not None:
        findings.notes.append(
            f"calls in flight during the {outage[1] - outage[0]:.1f} s outage waited and "
            f"succeeded; the slowest took {load.slowest(outage) * 1000:.0f} ms"
        )
    orders = set(load.orders)
    expected_per_order = Counter(a.order_id for a in accepted)

    # The read APIs want a token; the stack's admin token reads everywhere.
    headers = {"Authorization": f"Bearer {stack.admin_token}"}

    async def sent_emails() -> dict[str, list[str]]:
        """Per order, the Message-IDs of its communications the notifier records as sent."""
        async with httpx.AsyncClient(
            base_url=stack.url("notifier"), headers=headers, timeout=10
        ) as notifier:
            sent: dict[str, list[str]] = {}
            for order_id in orders:
                items = (
                    await notifier.get("/communications", params={"order_id": str(order_id)})
                ).json()["items"]
                sent[str(order_id)] = [
                    i["provider_message_id"] for i in items if i["status"] == "sent"
                ]
            return sent

    sent: dict[str, list[str]] = {}
    try:
        sent = await wait_until(
            sent_emails,
            lambda sent: all(len(sent[str(o)]) >= expected_per_order[o] for o in orders),
            within=within,
            what="an email per accepted change",
        )
    except TimeoutError as error:
        findings.stuck += 1
        findings.notes.append(str(error)[:200])

    events = await _order_events(stack.kafka_bootstrap_servers, orders)
    for order_id in orders:
        changes = [e for e in events.get(order_id, []) if e["type"] == "OrderStatusChanged"]
        ids = Counter(e["event_id"] for e in changes)
        findings.checked += len(changes)
        findings.duplicated += sum(n - 1 for n in ids.values())
        versions = [e["version"] for e in changes]  # in arrival order, per partition
        findings.out_of_order += sum(later < earlier for earlier, later in pairwise(versions))
        findings.lost += max(0, expected_per_order[order_id] - len(ids))

    delivered = Counter(str(m["Message-ID"]) for m in read_messages(stack.maildir))
    for order_id in orders:
        recorded = sent.get(str(order_id), [])
        findings.duplicated += max(0, len(recorded) - expected_per_order[order_id])
        for message_id in recorded:
            findings.lost += delivered[message_id] == 0
            findings.resent += max(0, delivered[message_id] - 1)

    async with httpx.AsyncClient(base_url=stack.url("audit"), headers=headers, timeout=30) as audit:
        for order_id in orders:
            entries = (
                await audit.get(f"/audit/orders/{order_id}/timeline", params={"limit": 1000})
            ).json()["items"]
            changes = [e for e in entries if e["action"] == "order.status_changed"]
            counts = Counter(e["event_id"] for e in changes)
            findings.duplicated += sum(n - 1 for n in counts.values())
            findings.lost += max(0, expected_per_order[order_id] - len(counts))
        verified = (await audit.get("/audit/verify")).json()
        if not verified["ok"]:
            findings.notes.append(f"audit chain broken: {verified.get('first_broken')}")
            findings.lost += 1
    return findings
