"""Composition root of the notifier: builds every dependency from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from notifier.adapters.broker import BrokerConnection
from notifier.adapters.outbox_relay import OutboxRelay
from notifier.adapters.schema import assert_schema_current
from notifier.adapters.smtp import SmtpEmailSender, SmtpSettings
from notifier.adapters.templates import EmailTemplates
from notifier.adapters.unit_of_work import UnitOfWorkFactory
from notifier.config import Settings
from notifier.domain.communication import RetryPolicy
from notifier.entrypoints import http
from notifier.entrypoints.consumer import register_event_handlers
from notifier.entrypoints.worker import run_dispatcher
from notifier.service import Dispatcher


def build_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url, pool_size=10, max_overflow=10, pool_pre_ping=True
    )


def build_dispatcher(settings: Settings, engine: AsyncEngine) -> Dispatcher:
    smtp = SmtpSettings(
        host=settings.smtp_host,
        port=settings.smtp_port,
        username=settings.smtp_username,
        password=settings.smtp_password,
        starttls=settings.smtp_starttls,
        use_tls=settings.smtp_use_tls,
        timeout=settings.smtp_timeout_seconds,
        mail_from=settings.mail_from,
        message_id_domain=settings.message_id_domain,
    )
    return Dispatcher(
        uow_factory=UnitOfWorkFactory(engine),
        sender=SmtpEmailSender(smtp),
        templates=EmailTemplates(),
        policy=RetryPolicy(
            settings.max_attempts, settings.backoff_base_seconds, settings.backoff_max_seconds
        ),
        # Unique per process, so a restarted replica never mistakes old leases for its own.
        owner=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}",
        batch_size=settings.dispatch_batch_size,
        lease=timedelta(seconds=settings.lease_seconds),
        concurrency=settings.dispatch_concurrency,
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    uow_factory = UnitOfWorkFactory(engine)
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        client_id="notifier",
    )
    recorded = asyncio.Event()
    register_event_handlers(broker, uow_factory, settings, recorded)
    connection = BrokerConnection(broker, settings.retry_seconds)
    relay = OutboxRelay(
        engine,
        broker,
        connection.connected,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval_seconds,
        retry_interval=settings.retry_seconds,
    )
    dispatcher = build_dispatcher(settings, engine)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await assert_schema_current(engine, settings.database_url)
        tasks = [
            asyncio.create_task(connection.connect(), name="kafka-connect"),
            asyncio.create_task(relay.run(), name="outbox-relay"),
            asyncio.create_task(
                run_dispatcher(
                    dispatcher,
                    recorded,
                    settings.dispatch_poll_interval_seconds,
                    settings.retry_seconds,
                ),
                name="dispatcher",
            ),
        ]
        try:
            yield
        finally:
            # Stop consuming first, so no new work arrives while the rest winds down.
            await broker.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await engine.dispose()

    app = FastAPI(
        title="Notifier",
        version="0.1.0",
        description="Customer email for order status changes, exactly once per event, "
        "channel, template and recipient.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.uow_factory = uow_factory
    app.state.kafka_connected = connection.connected
    http.install_error_handlers(app)
    app.include_router(http.router)
    return app
