"""All three services as real processes against the session's Kafka broker and databases,
with a real SMTP sink. The stack is shared by the e2e tests of one session."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from devstack import infra
from devstack.processes import free_port
from devstack.stack import SERVICES, Stack

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"


@pytest.fixture(scope="session")
def stack(kafka_bootstrap: str, databases: infra.TestDatabases) -> Iterator[Stack]:
    ports = {name: free_port() for name in (*SERVICES, "smtp")}
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # a fresh maildir and fresh logs per session
    system = Stack(kafka_bootstrap, databases.urls, ports, ARTIFACTS)
    try:
        system.start()
        yield system
    except BaseException:
        print(system.logs())
        raise
    finally:
        system.stop()


@pytest.fixture
async def order_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {stack.admin_token}"}
    async with httpx.AsyncClient(
        base_url=stack.url("order"), headers=headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def notifier_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url("notifier"), timeout=10) as client:
        yield client


@pytest.fixture
async def audit_api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url("audit"), timeout=10) as client:
        yield client
