"""Infrastructure shared by the integration and e2e layers: a real Kafka broker of the test
session's own and fresh PostgreSQL databases, both started by the project's scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from devstack import infra


@pytest.fixture(scope="session", autouse=True)
def dev_mode() -> Iterator[None]:
    """The test databases' roles have the local dev passwords, which the services accept only
    in dev mode; service processes inherit it too. Tests of the refusal set it otherwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKBONE_ENV", "dev")
        yield


@pytest.fixture(scope="session")
def kafka() -> Iterator[infra.Kafka]:
    broker = infra.fresh_test_kafka()
    asyncio.run(infra.ensure_topics(broker.bootstrap_servers))
    yield broker
    if broker.managed:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka: infra.Kafka) -> str:
    return kafka.bootstrap_servers


@pytest.fixture(scope="session")
def databases() -> Iterator[infra.TestDatabases]:
    created = infra.create_test_databases()
    yield created
    infra.drop_test_databases(created)
