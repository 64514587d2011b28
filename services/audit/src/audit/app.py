"""Composition root of the audit service: builds every dependency from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from audit import service
from audit.adapters.broker import BrokerConnection
from audit.adapters.metrics import PREFIX, AuditMetrics, MetricsSampler
from audit.adapters.schema import assert_schema_current, upgrade_to_head
from audit.adapters.unit_of_work import DatabaseBusy, DatabaseUnavailable, UnitOfWorkFactory
from audit.config import Settings, database_role, refuse_dev_secrets
from audit.domain.entries import ChainNotChecked, ChainReport
from audit.entrypoints import http, observability
from audit.entrypoints.consumer import AUDITED_TOPICS, register_audit_handlers
from audit.entrypoints.publications import declare_publications
from pgstatements import ping_when_idle
from servicekit.consumer_lag import ConsumerLagReader
from servicekit.token_verifier import TokenVerifier


def build_engine(settings: Settings) -> AsyncEngine:
    """The engine everything but the migrations runs on, as the runtime role."""
    # READ COMMITTED whatever the database's default: appending to the chain relies on it
    # (see AuditRepository.lock_tail). hide_parameters: bound values stay out of error
    # messages and logs.
    engine = create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_timeout=settings.database_pool_wait_seconds,
        # The most recently used connection first: in steady use it never idles into a ping.
        pool_use_lifo=True,
        isolation_level="READ COMMITTED",
        hide_parameters=True,
    )
    ping_when_idle(engine)
    return engine


def migrate(settings: Settings) -> None:
    """Upgrade the schema to the latest migration, as the database's owner."""
    refuse_dev_secrets(settings, migrating=True)
    upgrade_to_head(settings.migration_database_url.get_secret_value(), database_role(settings))


async def check_chain(settings: Settings) -> ChainReport | ChainNotChecked:
    """The hash chain verified on the audit database, for both CLIs (`python -m audit verify`,
    `orderctl audit verify`). Whatever stops the check is "not checked", never a broken chain:
    a monitoring job must not read an outage as tampering."""
    try:
        engine = build_engine(settings)
        try:
            return await service.verify(UnitOfWorkFactory(engine))
        finally:
            await engine.dispose()
    except (DatabaseUnavailable, DatabaseBusy) as error:
        return ChainNotChecked(f"database: {error}")
    except Exception as error:
        logging.getLogger("audit").exception("verify failed")
        return ChainNotChecked(f"nothing was checked: {error}")


def build_sampler(settings: Settings, metrics: AuditMetrics) -> MetricsSampler:
    lag = ConsumerLagReader(
        settings.kafka_bootstrap_servers, settings.consumer_group, list(AUDITED_TOPICS)
    )

    async def consumer_lag() -> None:
        await metrics.sample_consumer_lag(lag)

    return MetricsSampler(
        {"consumer_lag": consumer_lag},
        metrics.sample_failures,
        settings.metrics_interval_seconds,
        on_stop=lag.close,
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = build_engine(settings)
    uow_factory = UnitOfWorkFactory(engine)
    metrics = AuditMetrics()
    # The producer only writes dead letters; idempotent with acks=all so none is lost or doubled.
    # The telemetry middleware carries the trace in the records' headers, both ways.
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        client_id="audit",
        # On stop, the batch in hand may finish (and commit its offsets) for this long.
        graceful_timeout=settings.shutdown_grace_seconds,
        middlewares=(KafkaTelemetryMiddleware(), *metrics.broker_middlewares()),
        logger=logging.getLogger("faststream.access.kafka"),
    )
    register_audit_handlers(broker, uow_factory, settings, metrics.entries_recorded.inc)
    declare_publications(broker)
    connection = BrokerConnection(broker, settings.retry_seconds)
    sampler = build_sampler(settings, metrics)
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
        sampling = asyncio.create_task(sampler.run(), name="metrics-sampler")
        try:
            # What startup built (modules, the app, its schemas) lives as long as the process:
            # frozen (its garbage collected first), a full collection no longer walks it.
            # Walking it paused the event loop for 130-170 ms a few times a minute.
            gc.collect()
            gc.freeze()
            yield
        finally:
            for task in (sampling, connect):
                task.cancel()
            await asyncio.gather(sampling, connect, return_exceptions=True)
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
    app.state.metrics = metrics
    http.install_error_handlers(app)
    app.include_router(http.router)
    observability.install(app, metrics.registry, PREFIX)
    return app
