"""Infrastructure shared by the integration and e2e layers: a real Kafka broker of the test
session's own and fresh PostgreSQL databases, both started by the project's scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from devstack import infra


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
