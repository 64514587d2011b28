"""Observability of the running system, all three services as processes: one HTTP status
change is one trace across order (request, outbox relay), notifier (consume, SMTP send,
announcement) and audit (each audited message); every log line is a JSON object and the lines
written for that change carry its trace id; each service's /metrics shows its outbox backlog
(where it has one) and its consumer lag."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from functools import partial
from typing import Any
from uuid import uuid4

import httpx

from contracts import NOTIFICATIONS_EVENTS, ORDERS_EVENTS
from devstack.metrics import Scrape
from devstack.stack import SERVICES, Stack
from devstack.waiting import wait_until
from tests.observability import json_lines

Lines = list[dict[str, Any]]


def spans_and_logs(stack: Stack, service: str) -> tuple[Lines, Lines]:
    """The spans and the log lines in a service's log: every line it wrote is one JSON object
    (json_lines fails on any other)."""
    spans: Lines = []
    logs: Lines = []
    for line in json_lines(stack.processes[service].log_path):
        (spans if "context" in line and "kind" in line else logs).append(line)
    return spans, logs


def names_by_service(stack: Stack, trace_id: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for service in SERVICES:
        spans, _ = spans_and_logs(stack, service)
        for span in spans:
            if span["context"]["trace_id"] == f"0x{trace_id}":
                found[span["resource"]["attributes"]["service.name"]].add(span["name"])
    return found


def has_samples(name: str, metrics: Scrape) -> bool:
    return bool(metrics.values(name))


async def test_one_status_change_is_one_trace_across_the_three_services(
    stack: Stack, order_api: httpx.AsyncClient
) -> None:
    customer = {"name": "Trace", "email": f"trace+{uuid4().hex[:8]}@example.com"}
    created = await order_api.post("/orders", json={"customer": customer})
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    correlation_id = f"obs-{uuid4().hex[:8]}"
    changed = await order_api.post(
        f"/orders/{order_id}/status",
        json={"status": "confirmed"},
        headers={"X-Correlation-ID": correlation_id},
    )
    assert changed.status_code == 200, changed.text

    async def request_logged() -> list[dict[str, Any]]:
        _, logs = spans_and_logs(stack, "order")
        return [line for line in logs if line.get("correlation_id") == correlation_id]

    (request_line,) = await wait_until(
        request_logged, bool, within=10, what="the change's request log line"
    )
    assert request_line["http_path"] == f"/orders/{order_id}/status"
    assert request_line["http_status"] == 200
    assert request_line["service"] == "order"
    trace_id = request_line["trace_id"]

    expected = {
        "order": {"POST /orders/{order_id}/status", f"{ORDERS_EVENTS} publish"},
        "notifier": {
            f"{ORDERS_EVENTS} process",
            "deliver email",
            "smtp send",
            f"{NOTIFICATIONS_EVENTS} publish",
        },
        "audit": {f"{ORDERS_EVENTS} audit", f"{NOTIFICATIONS_EVENTS} audit"},
    }
    found = await wait_until(
        lambda: asyncio.to_thread(names_by_service, stack, trace_id),
        lambda found: all(names <= found[service] for service, names in expected.items()),
        within=60,
        what=f"the spans of trace {trace_id} in every service's log",
    )
    assert set(found) == set(SERVICES)

    # The notifier's log line about the email carries the trace and the correlation id too.
    _, notifier_logs = spans_and_logs(stack, "notifier")
    (sent,) = [
        line
        for line in notifier_logs
        if line.get("trace_id") == trace_id and line["message"].startswith("communication ")
    ]
    assert sent["correlation_id"] == correlation_id
    assert sent["service"] == "notifier"
    for service in SERVICES:
        _, logs = spans_and_logs(stack, service)
        assert logs, f"{service} wrote no JSON log line"
        assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in logs)


async def test_each_service_exposes_its_outbox_backlog_and_consumer_lag(
    stack: Stack, order_api: httpx.AsyncClient
) -> None:
    created = await order_api.post("/orders", json={"customer": {"name": "Metrics"}})
    assert created.status_code == 201, created.text

    async def scrape(service: str) -> Scrape:
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=10) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200, response.text
        return Scrape(response.text)

    order = await wait_until(
        lambda: scrape("order"),
        lambda m: (
            m.value("order_outbox_backlog") == 0
            and (m.value("order_outbox_relayed_total") or 0) >= 1
            and bool(m.values("order_consumer_lag"))
            # sampled periodically: a sample taken before the broker connected reads 0
            and m.value("order_kafka_up") == 1
        ),
        within=60,
        what="the order outbox relayed, the commands consumer's lag and Kafka up",
    )
    assert order.value("order_kafka_up") == 1
    assert order.value("order_http_requests_total", handler="/orders", method="POST") is not None
    for service in ("notifier", "audit"):
        lag = f"{service}_consumer_lag"
        metrics = await wait_until(
            partial(scrape, service),
            partial(has_samples, lag),
            within=30,
            what=f"the {service} consumer lag",
        )
        assert all(partition_lag >= 0 for partition_lag in metrics.values(lag))
    notifier = await scrape("notifier")
    assert notifier.value("notifier_outbox_backlog") is not None
    assert notifier.value("notifier_communications", status="queued") is not None
