"""Fixtures for testing one service at a time against the session's real Kafka and
PostgreSQL (the broker and databases come from tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from devstack import infra
from order import service as order_service
from order.adapters.schema import upgrade_to_head as upgrade_orders
from order.adapters.unit_of_work import UnitOfWorkFactory
from order.app import build_app, build_engine
from order.config import Settings as OrderSettings
from order.domain.auth import Role


@dataclass
class OrderService:
    client: httpx.AsyncClient
    admin_token: str
    viewer_token: str

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def as_viewer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.viewer_token}"}


@pytest.fixture(scope="session")
async def order_service_app(
    kafka_bootstrap: str, databases: infra.TestDatabases
) -> AsyncIterator[OrderService]:
    """The order service in this process (HTTP API and outbox relay), its lifespan running."""
    settings = OrderSettings(
        database_url=databases.urls["order"],
        kafka_bootstrap_servers=kafka_bootstrap,
        relay_poll_interval_seconds=0.5,
    )
    await asyncio.to_thread(upgrade_orders, settings.database_url)  # alembic runs its own loop
    engine = build_engine(settings)
    uow = UnitOfWorkFactory(engine)
    admin = await order_service.issue_token(uow, "it-admin", Role.ADMIN)
    viewer = await order_service.issue_token(uow, "it-viewer", Role.VIEWER)
    await engine.dispose()

    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://order") as client:
            yield OrderService(client, admin, viewer)


@pytest.fixture
async def events_consumer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """Reads `orders.events` from the beginning, outside any consumer group."""
    consumer = AIOKafkaConsumer(
        "orders.events",
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()
