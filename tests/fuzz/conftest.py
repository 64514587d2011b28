"""The order service as a real process, fuzzed through its own OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import infra
from devstack.processes import free_port, migrate, service_env, service_process
from devstack.stack import Stack

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
