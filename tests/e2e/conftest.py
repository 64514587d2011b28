"""All three services as real processes against the session's Kafka broker and databases,
with a real SMTP sink. The stack is shared by the e2e tests of one session."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from audit.entrypoints.consumer import AUDITED_TOPICS
from contracts.topics import ORDERS_COMMANDS, ORDERS_EVENTS
from devstack import infra
from devstack.processes import free_port
from devstack.stack import SERVICES, Stack

CONSUMED = {
    "order-commands": [ORDERS_COMMANDS],
    "notifier": [ORDERS_EVENTS],
    "audit": list(AUDITED_TOPICS),
}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"

# Spans as JSON lines in each service's log (exported within 0.2 s), metrics sampled each second.
TELEMETRY = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_BSP_SCHEDULE_DELAY": "200",
    **{f"{service.upper()}_METRICS_INTERVAL_SECONDS": "1" for service in SERVICES},
}


@pytest.fixture(scope="module")
def e2e_databases() -> Iterator[infra.TestDatabases]:
    """Databases of the e2e stack's own: no in-process service of another layer shares them."""
    created = infra.create_test_databases("e2e")
    yield created
    infra.drop_test_databases(created)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, e2e_databases: infra.TestDatabases) -> Iterator[Stack]:
    """Module-scoped, so its consumers have left their groups before other layers' tests run."""
    ports = {name: free_port() for name in (*SERVICES, "smtp")}
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # a fresh maildir and fresh logs per module
    system = Stack(kafka_bootstrap, e2e_databases.services, ports, ARTIFACTS, common_env=TELEMETRY)
    asyncio.run(start_groups_at_end(kafka_bootstrap))
    try:
        system.start()
        yield system
    except BaseException:
        print(system.logs())
        raise
    finally:
        system.stop()


async def start_groups_at_end(kafka_bootstrap: str) -> None:
    """The services' consumer groups begin after what other layers' tests left on the
    session's broker: the stack handles only the messages its tests cause."""
    for group, topics in CONSUMED.items():
        for topic in topics:
            await infra.commit_group_at_end(kafka_bootstrap, group, topic)


@pytest.fixture
async def order_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        base_url=stack.url("order"), headers=headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def notifier_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        base_url=stack.url("notifier"), headers=headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def audit_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        base_url=stack.url("audit"), headers=headers, timeout=10
    ) as client:
        yield client
