"""The whole system as processes under steady load, on its own databases, for breaking
things on purpose. Run with `make chaos`."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from devstack import infra
from devstack.processes import free_port
from devstack.stack import SERVICES, Stack
from tests.chaos.harness import TABLE_HEADER, Findings

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos"


@pytest.fixture(scope="module")
def chaos_postgres() -> Iterator[infra.Postgres]:
    """A cluster of the suite's own, as one scenario restarts PostgreSQL."""
    postgres = infra.restartable_test_postgres()
    yield postgres
    postgres.start()


@pytest.fixture(scope="module")
def chaos_databases(chaos_postgres: infra.Postgres) -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("chaos", admin_url=chaos_postgres.admin_url)
    yield created
    infra.drop_test_databases(created)


@pytest.fixture(scope="module")
def chaos_stack(kafka_bootstrap: str, chaos_databases: infra.TestDatabases) -> Iterator[Stack]:
    ports = {name: free_port() for name in (*SERVICES, "smtp", "sms")}
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    system = Stack(kafka_bootstrap, chaos_databases.services, ports, ARTIFACTS)
    try:
        system.start()
        yield system
    finally:
        system.stop()


@pytest.fixture
async def order_client(chaos_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {chaos_stack.admin_token}"}
    async with httpx.AsyncClient(
        base_url=chaos_stack.url("order"), headers=headers, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def report() -> Iterator[list[Findings]]:
    """Every scenario's findings, written as one table when the module ends."""
    rows: list[Findings] = []
    yield rows
    table = "\n".join([TABLE_HEADER, *(f.row() for f in rows)])
    notes = "\n".join(f"- {f.scenario}: {note}" for f in rows for note in f.notes)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.md").write_text(f"{table}\n\n{notes}\n")
    print(f"\n{table}\n{notes}")
