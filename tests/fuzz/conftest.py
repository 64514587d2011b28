"""The order service fuzzed through its own OpenAPI document (as a real process) and through
`orders.commands` (in this process, on the real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from devstack import infra
from devstack.processes import free_port, migrate, service_env, service_process
from devstack.stack import Stack
from order.app import build_app
from order.app import migrate as migrate_order
from order.config import Settings as OrderSettings
from tests.fuzz.topics import group_at_end

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "fuzz"


@pytest.fixture(scope="session")
def fuzz_databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases("fuzz")
    yield created
    infra.drop_test_databases(created)


@pytest.fixture(scope="session")
def order_api_url(kafka_bootstrap: str, fuzz_databases: infra.TestDatabases) -> Iterator[str]:
    port = free_port()
    env = service_env(
        "order",
        database=fuzz_databases.services["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        http_port=port,
        # The notifier and the audit service, whose reads the order API relays, do not run
        # here: ports nothing listens on (never the local stack's defaults).
        extra={
            f"ORDER_{peer}_SERVICE_URL": f"http://127.0.0.1:{free_port()}"
            for peer in ("NOTIFIER", "AUDIT")
        },
    )
    migrate("order", env)
    process = service_process("order", env, port, ARTIFACTS)
    process.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


@pytest.fixture(scope="session")
def admin_token(kafka_bootstrap: str, fuzz_databases: infra.TestDatabases) -> str:
    stack = Stack(kafka_bootstrap, fuzz_databases.services, {"order": 0}, ARTIFACTS)
    return stack.issue_admin_token("fuzzer")


@pytest.fixture(scope="module")
def command_databases() -> Iterator[infra.TestDatabases]:
    """Databases of the order service that consumes the fuzzed commands: its own, so every
    result in them is that consumer's doing."""
    created = infra.create_test_databases("fuzzcmd")
    yield created
    infra.drop_test_databases(created)


@pytest.fixture
async def order_command_consumer(
    kafka_bootstrap: str, command_databases: infra.TestDatabases
) -> AsyncIterator[OrderSettings]:
    """The order service in this process, consuming `orders.commands` in a consumer group of
    its own that starts at the topic's end (it sees only what its test publishes)."""
    group = await group_at_end(kafka_bootstrap, f"fuzz-commands-{uuid4().hex[:8]}")
    settings = OrderSettings(
        database_url=command_databases.urls["order"],
        migration_database_url=command_databases.migration_urls["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        commands_consumer_group=group,
        relay_poll_interval_seconds=0.5,
    )
    await asyncio.to_thread(migrate_order, settings)  # alembic runs its own loop
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        yield settings
