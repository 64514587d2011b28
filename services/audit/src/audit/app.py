"""Composition root of the audit service: builds every dependency from the settings."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from audit.adapters.broker import BrokerConnection
from audit.adapters.schema import assert_schema_current, upgrade_to_head
from audit.adapters.token_verifier import TokenVerifier
from audit.adapters.unit_of_work import UnitOfWorkFactory
from audit.config import Settings, database_role, refuse_dev_secrets
from audit.entrypoints import http
from audit.entrypoints.consumer import register_audit_handlers
from audit.entrypoints.publications import declare_publications


def build_engine(settings: Settings) -> AsyncEngine:
    """The engine everything but the migrations runs on, as the runtime role."""
    # READ COMMITTED whatever the database's default: appending to the chain relies on it
    # (see AuditRepository.lock_tail). hide_parameters: bound values stay out of error
    # messages and logs.
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        isolation_level="READ COMMITTED",
        hide_parameters=True,
    )


def migrate(settings: Settings) -> None:
    """Upgrade the schema to the latest migration, as the database's owner."""
    refuse_dev_secrets(settings, migrating=True)
    upgrade_to_head(settings.migration_database_url.get_secret_value(), database_role(settings))


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    uow_factory = UnitOfWorkFactory(engine)
    # The producer only writes dead letters; idempotent with acks=all so none is lost or doubled.
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        client_id="audit",
    )
    register_audit_handlers(broker, uow_factory, settings)
    declare_publications(broker)
    connection = BrokerConnection(broker, settings.retry_seconds)
    token_verifier = TokenVerifier(
        settings.order_service_url,
        timeout=settings.order_service_timeout_seconds,
        cache_seconds=settings.token_cache_seconds,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Building the app (for its documents) needs no secrets; starting it does.
        refuse_dev_secrets(settings)
        await assert_schema_current(engine)
        connect = asyncio.create_task(connection.connect(), name="kafka-connect")
        try:
            yield
        finally:
            connect.cancel()
            await asyncio.gather(connect, return_exceptions=True)
            await broker.stop()
            await token_verifier.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Audit",
        version="0.1.0",
        description="The append-only, hash-chained audit trail of every order change, "
        "rejected command and customer communication.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.uow_factory = uow_factory
    app.state.token_verifier = token_verifier
    app.state.kafka = connection
    http.install_error_handlers(app)
    app.include_router(http.router)
    return app
